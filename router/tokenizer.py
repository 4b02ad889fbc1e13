"""Tokenization, chat templates and incremental detokenization (router side only).

Workers see token ids only, so everything text-shaped lives here. The library
does the work: transformers for the tokenizer and chat template, and
``tokenizers.decoders.DecodeStream`` for incremental detokenization (it handles
multi-byte characters split across tokens).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer, PreTrainedTokenizerBase


class Tokenizer:
    """One model's tokenizer. Thread-compatible, shared by all requests."""

    def __init__(self, model_dir: str | Path) -> None:
        self._tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(model_dir))
        self.eos_token_ids: tuple[int, ...] = _eos_ids(self._tok, Path(model_dir))
        self.vocab_size: int = len(self._tok)

    def encode(self, text: str) -> list[int]:
        """Completion prompt → ids, with the model's special-token prefix (as vLLM does)."""
        return list(self._tok(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Chat messages → ids via the model's chat template, ending with the assistant turn."""
        if self._tok.chat_template is None:
            raise ValueError("this model has no chat template; use /v1/completions")
        text = self._tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        # The template already wrote the special tokens; adding them again would double BOS.
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))

    def stream_decoder(self, prompt_ids: Sequence[int]) -> StreamDecoder:
        return StreamDecoder(self._tok, prompt_ids)


class StreamDecoder:
    """Turns generated ids into text pieces as they arrive; one per request."""

    def __init__(self, tok: PreTrainedTokenizerBase, prompt_ids: Sequence[int]) -> None:
        self._backend = tok.backend_tokenizer
        self._special = set(tok.all_special_ids)
        # Prefix with the prompt's tail so the first generated token is decoded in
        # context (leading-space handling); DecodeStream drops the prefix's text.
        self._stream = DecodeStream(skip_special_tokens=True)
        for token_id in list(prompt_ids)[-4:]:
            self._stream.step(self._backend, token_id)

    def step(self, token_id: int) -> str:
        piece = self._stream.step(self._backend, token_id)
        return piece or ""


def _eos_ids(tok: PreTrainedTokenizerBase, model_dir: Path) -> tuple[int, ...]:
    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_config = model_dir / "generation_config.json"
    if gen_config.is_file():
        eos = json.loads(gen_config.read_text()).get("eos_token_id")
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(i) for i in eos)
    return tuple(sorted(ids))


class StopMatcher:
    """Applies stop strings to streamed text, holding back what may start a stop.

    ``feed`` returns the text safe to emit now and whether a stop string was hit
    (the stop string itself is not emitted, as in the OpenAI API).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        keep = self._held_suffix()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def _held_suffix(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        text = self._pending
        for n in range(min(len(text), max(len(s) for s in self._stops) - 1), 0, -1):
            if any(s.startswith(text[-n:]) for s in self._stops):
                return n
        return 0

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

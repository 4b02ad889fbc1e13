"""Tokenization, chat templates and incremental detokenization (router side only).

Workers see token ids only, so everything text-shaped lives here. The library
does the work: transformers for the tokenizer and chat template, and
``tokenizers.decoders.DecodeStream`` for incremental detokenization (it handles
multi-byte characters split across tokens).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pdserve.config import has_tokenizer
from router import chat


class Tokenizer:
    """One model's tokenizer. Thread-compatible, shared by all requests."""

    def __init__(self, model_dir: str | Path) -> None:
        self._tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(model_dir))
        self._space_marker = _space_marker(self._tok)
        self.eos_token_ids: tuple[int, ...] = _eos_ids(self._tok, Path(model_dir))
        self.vocab_size: int = len(self._tok)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Completion prompt → ids, with the model's special-token prefix unless told not to
        (vLLM's ``add_special_tokens``)."""
        return list(self._tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def bad_words_ids(self, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        """Token sequences for ``bad_words``, as vLLM's ``SamplingParams.update_from_tokenizer``
        makes them: each word as is, and with a leading space when that tokenizes to a
        different first token of the same length (the word in mid-text)."""
        out: list[tuple[int, ...]] = []
        for word in words:
            plain = tuple(self._tok.encode(word.lstrip(), add_special_tokens=False))
            if not plain:
                raise ValueError("bad_words entries must tokenize to at least one token.")
            out.append(plain)
            spaced = tuple(self._tok.encode(" " + word.lstrip(), add_special_tokens=False))
            if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
                out.append(spaced)
        return tuple(out)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Chat messages → ids as a default chat request renders them (router/chat.py),
        ending with the assistant turn."""
        text = chat.render(self, messages, chat.ChatOptions(), chat.template_kwargs())
        # The template already wrote the special tokens; adding them again would double BOS.
        return self.encode(text, add_special_tokens=False)

    def chat_template(self, override: str | None = None, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The template a chat renders with: ``override``, else the model's (its tool-use
        variant, if it has named ones, when tools are given). ValueError if there is none."""
        if override is None and self._tok.chat_template is None:
            raise ValueError("this model has no chat template; use /v1/completions or give the router --chat-template")
        return str(self._tok.get_chat_template(override, tools=[dict(t) for t in tools] if tools is not None else None))

    def render_chat(self, conversation: list[dict[str, Any]], template: str, kwargs: Mapping[str, Any]) -> str:
        """``apply_chat_template`` with the template and arguments as given; its errors propagate."""
        return str(self._tok.apply_chat_template(conversation, chat_template=template, tokenize=False, **kwargs))

    @property
    def chat_template_params(self) -> frozenset[str]:
        """The arguments ``apply_chat_template`` names (vLLM passes those whatever the template)."""
        names = inspect.signature(self._tok.apply_chat_template).parameters
        return frozenset(names) - {"conversation", "chat_template", "tokenize", "kwargs", "tokenizer_kwargs"}

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def stream_decoder(self, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self._tok, prompt_ids, skip_special_tokens)

    def token_strs(self, token_ids: Sequence[int]) -> list[str | None]:
        """Each token's vocabulary entry (``convert_ids_to_tokens``: "Ġworld"), as vLLM's
        /tokenize shows them; None for an id past the vocabulary."""
        return list(self._tok.convert_ids_to_tokens(list(token_ids)))

    def token_texts(self, token_ids: Sequence[int]) -> list[str]:
        """Each token decoded on its own, as vLLM shows tokens in logprobs
        (``convert_ids_list_to_tokens``): a SentencePiece-style leading-space marker that
        ``decode`` drops is put back as spaces."""
        texts = [str(self._tok.decode([t])) or "" for t in token_ids]
        if self._space_marker is None:
            return texts
        raw = self._tok.convert_ids_to_tokens(list(token_ids))
        return [_restore_leading_spaces(r or "", t, self._space_marker) for r, t in zip(raw, texts, strict=True)]


class TokenIdsOnly:
    """Stands in for the tokenizer of a model directory that has none (e.g. a
    ``load_format=dummy`` benchmark model): prompts must be token ids, and
    completions carry token ids (``return_token_ids``) with empty text."""

    def __init__(self, vocab_size: int, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> TokenIdsOnly:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        return cls(int(config["vocab_size"]), _eos_ids(None, Path(model_dir)))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise ValueError("this model has no tokenizer: send the prompt as a list of token ids")

    def bad_words_ids(self, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        if words:
            raise ValueError("this model has no tokenizer: bad_words cannot be tokenized")
        return ()

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        raise ValueError("this model has no tokenizer: use /v1/completions with token ids")

    def chat_template(self, override: str | None = None, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        raise ValueError("this model has no tokenizer: use /v1/completions with token ids")

    def render_chat(self, conversation: list[dict[str, Any]], template: str, kwargs: Mapping[str, Any]) -> str:
        raise ValueError("this model has no tokenizer: use /v1/completions with token ids")

    @property
    def chat_template_params(self) -> frozenset[str]:
        return frozenset()

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return ""

    def stream_decoder(self, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> _Silent:
        return _Silent()

    def token_texts(self, token_ids: Sequence[int]) -> list[str]:
        return ["" for _ in token_ids]

    def token_strs(self, token_ids: Sequence[int]) -> list[str | None]:
        raise ValueError("this model has no tokenizer: its tokens have no strings")


class _Silent:
    def step(self, token_id: int) -> str:
        return ""


def load_tokenizer(model_dir: str | Path) -> Tokenizer | TokenIdsOnly:
    """The model's tokenizer, or ``TokenIdsOnly`` when the directory ships none."""
    path = Path(model_dir)
    return Tokenizer(path) if has_tokenizer(path) else TokenIdsOnly.from_dir(path)


class StreamDecoder:
    """Turns generated ids into text pieces as they arrive; one per request."""

    def __init__(self, tok: PreTrainedTokenizerBase, prompt_ids: Sequence[int], skip_special_tokens: bool) -> None:
        self._backend = tok.backend_tokenizer
        # Prefix with the prompt's tail so the first generated token is decoded in
        # context (leading-space handling); DecodeStream drops the prefix's text.
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        for token_id in list(prompt_ids)[-4:]:
            self._stream.step(self._backend, token_id)

    def step(self, token_id: int) -> str:
        piece = self._stream.step(self._backend, token_id)
        return piece or ""


def _space_marker(tok: PreTrainedTokenizerBase) -> str | None:
    """The Metaspace replacement character of the tokenizer's pre-tokenizer, if any (the
    case where ``decode`` of one token drops its leading space)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    for part in [pre, *pre.get("pretokenizers", [])]:
        if part.get("type") == "Metaspace":
            return str(part.get("replacement", "\u2581"))
    return None


def _restore_leading_spaces(raw: str, text: str, marker: str) -> str:
    markers = len(raw) - len(raw.lstrip(marker))
    missing = markers - (len(text) - len(text.lstrip(" ")))
    return " " * missing + text if missing > 0 else text


def _eos_ids(tok: PreTrainedTokenizerBase | None, model_dir: Path) -> tuple[int, ...]:
    """EOS ids from the tokenizer and the model's generation/config files (the engine
    has no tokenizer, so the router passes these as stop token ids)."""
    ids: set[int] = set()
    if tok is not None and tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(i) for i in eos)
    return tuple(sorted(ids))


class StopMatcher:
    """Applies stop strings to streamed text, holding back what may start a stop.

    ``feed`` returns the text safe to emit now and the stop string it hit, if any. The
    stop string itself is not emitted (the OpenAI API) unless ``include`` (vLLM's
    ``include_stop_str_in_output``).
    """

    def __init__(self, stops: Sequence[str], include: bool = False) -> None:
        self._stops = tuple(stops)
        self._include = include
        self._pending = ""

    def feed(self, text: str, armed: bool = True) -> tuple[str, str | None]:
        """(text safe to emit now, the stop string that matched or None). Unarmed (vLLM:
        fewer than ``min_tokens`` generated), nothing matches; the held-back tail may still
        complete a stop once armed. Of several matches, the one that ends first wins (then
        the earlier in the list), as vLLM's ``check_stop_strings``."""
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, None
        hits = [(i + len(s), n, i, s) for n, s in enumerate(self._stops) if (i := self._pending.find(s)) >= 0]
        if hits and armed:
            _, _, at, stop = min(hits)
            end = at + len(stop) if self._include else at
            out, self._pending = self._pending[:end], ""
            return out, stop
        keep = self._held_suffix()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, None

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

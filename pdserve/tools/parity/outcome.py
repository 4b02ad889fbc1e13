"""What an answer says, the same way for JSON bodies and SSE streams: per choice the text,
token ids, finish/stop reason, logprobs and tool calls; usage; prompt ids and logprobs.
A stream is reassembled from its chunks, so a streamed and a non-streamed answer of one
request normalize alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdserve.tools.parity.client import Reply


@dataclass(frozen=True)
class TokenLogprob:
    """One position's logprob. ``top``: token → logprob of the alternatives; ``extra``:
    chat's ``bytes`` or completions' ``text_offset``, compared exactly."""

    token: str
    logprob: float | None
    top: dict[str, float | None]
    extra: Any = None


@dataclass
class Choice:
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    stop_reason: Any = None
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[tuple[str, str]] | None = None
    prompt_token_ids: list[int] | None = None  # completions put them on the choice
    prompt_logprobs: Any = None


@dataclass
class Outcome:
    choices: dict[int, Choice] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    prompt_token_ids: list[int] | None = None  # chat puts them at the top
    prompt_logprobs: Any = None
    models: set[str] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)
    errors: list[Any] = field(default_factory=list)  # in-stream error events

    def choice(self, index: int) -> Choice:
        return self.choices.setdefault(index, Choice())


def outcome(reply: Reply) -> Outcome:
    out = Outcome()
    for part in reply.events if reply.events else [reply.body]:
        if isinstance(part, dict):
            _add(out, part)
    return out


def _add(out: Outcome, part: dict[str, Any]) -> None:
    """Fold one body or one chunk into ``out``: texts, ids and logprobs accumulate,
    reasons and usage keep the last non-null value."""
    if "error" in part:
        out.errors.append(part["error"])
        return
    if isinstance(part.get("model"), str):
        out.models.add(part["model"])
    if isinstance(part.get("object"), str):
        out.objects.add(part["object"])
    if part.get("usage") is not None:
        out.usage = part["usage"]
    if part.get("prompt_token_ids") is not None:
        out.prompt_token_ids = part["prompt_token_ids"]
    if part.get("prompt_logprobs") is not None:
        out.prompt_logprobs = part["prompt_logprobs"]
    for raw in part.get("choices") or []:
        if isinstance(raw, dict):
            _add_choice(out.choice(int(raw.get("index", 0))), raw)


def _add_choice(choice: Choice, raw: dict[str, Any]) -> None:
    message = raw.get("message") or raw.get("delta")
    if isinstance(message, dict):
        choice.text += message.get("content") or ""
        _add_tool_calls(choice, message.get("tool_calls"))
    else:
        choice.text += raw.get("text") or ""
    if raw.get("token_ids") is not None:
        choice.token_ids = [*(choice.token_ids or []), *raw["token_ids"]]
    if raw.get("finish_reason") is not None:
        choice.finish_reason = raw["finish_reason"]
    if raw.get("stop_reason") is not None:
        choice.stop_reason = raw["stop_reason"]
    if raw.get("prompt_token_ids") is not None:
        choice.prompt_token_ids = raw["prompt_token_ids"]
    if raw.get("prompt_logprobs") is not None:
        choice.prompt_logprobs = raw["prompt_logprobs"]
    logprobs = _logprobs(raw.get("logprobs"))
    if logprobs is not None:
        choice.logprobs = [*(choice.logprobs or []), *logprobs]


def _add_tool_calls(choice: Choice, calls: Any) -> None:
    """Tool calls by position; a stream sends a call's arguments in pieces."""
    for i, call in enumerate(calls or []):
        fn = call.get("function") or {}
        index = int(call.get("index", i))
        have = choice.tool_calls = choice.tool_calls or []
        while len(have) <= index:
            have.append(("", ""))
        name, args = have[index]
        have[index] = (name + (fn.get("name") or ""), args + (fn.get("arguments") or ""))


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict):
        return None
    if "content" in raw:  # chat
        return [
            TokenLogprob(
                e.get("token"),
                e.get("logprob"),
                {t.get("token"): t.get("logprob") for t in e.get("top_logprobs") or []},
                e.get("bytes"),
            )
            for e in raw.get("content") or []
        ]
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or [None] * len(tokens)
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    offsets = raw.get("text_offset") or [None] * len(tokens)
    return [TokenLogprob(t, v, dict(top or {}), o) for t, v, top, o in zip(tokens, values, tops, offsets, strict=False)]

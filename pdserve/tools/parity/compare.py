"""Compare one pair of answers to the same request (A: the server under test, B: the reference).

Order: transport, status class (any 5xx is a mismatch), then for two 4xx the exact status,
A's OpenAI error shape and the ``param`` B names; for two 2xx the shape (JSON key paths and
types) and what the answers say (``outcome``). Fields that differ between any two servers
or runs are ignored: ``IGNORED_PATHS``. Logprobs are equal within ``LOGPROB_ABS_TOL``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pdserve.tools.parity.cases import Case
from pdserve.tools.parity.client import Reply, Server
from pdserve.tools.parity.outcome import Choice, Outcome, TokenLogprob, outcome
from pdserve.tools.parity.shape import key_paths, shape_diff, stream_key_paths

# Both servers run the same kernels on the same weights; what may differ is the batch a
# request lands in and where its prompt's KV came from (prefix cache, NIXL), which can
# reorder float sums. Measured on fp32 CPU (docs/parity.md): no difference at all. 1e-4 is
# room for a reordered fp32 sum, and far below what a real bug moves (logprobs taken after
# temperature or penalties: > 1e-2). bf16 or GPU runs need --logprob-tol.
LOGPROB_ABS_TOL = 1e-4
# vLLM names a field that fails its pydantic model by FastAPI's location, "body.top_k";
# the field's name is what a client acts on, so the prefix is not compared.
BODY_LOCATION = "body."
ERROR_KEYS = {"message": (str,), "type": (str,), "param": (str, type(None)), "code": (str, int, type(None))}


@dataclass(frozen=True)
class Mismatch:
    """One difference. ``path``: where in the answer (empty for whole-answer kinds)."""

    case: str
    kind: str
    a: Any
    b: Any
    path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "kind": self.kind, "path": self.path, "a": self.a, "b": self.b}


def compare(
    case: Case, a: Reply, b: Reply, servers: tuple[Server, Server], tol: float = LOGPROB_ABS_TOL
) -> list[Mismatch]:
    """The mismatches between A's and B's answers; logprobs are equal within ``tol``."""
    diff = _Diff(case.id, tol)
    if a.status == 0 or b.status == 0:
        diff.add("transport", a.transport or a.status, b.transport or b.status)
    elif a.status >= 500 or b.status >= 500:
        diff.add("server_error", summary(a), summary(b))
    elif a.status // 100 != b.status // 100:
        diff.add("status", summary(a), summary(b))
    elif a.status >= 400:
        _compare_errors(diff, a, b)
    else:
        _compare_answers(diff, case, a, b, servers)
    return diff.found


def summary(reply: Reply) -> str:
    """The status and, for an error, its message: what a table cell shows."""
    if reply.status == 0:
        return f"no answer: {reply.transport}"
    err = reply.body.get("error") if isinstance(reply.body, dict) else None
    if isinstance(err, dict):
        return f"{reply.status} {err.get('message')!s}"[:300]
    if reply.status >= 400 or reply.text:
        return f"{reply.status} {reply.text or reply.body!s}"[:300]
    return str(reply.status)


class _Diff:
    def __init__(self, case: str, tol: float) -> None:
        self.case, self.tol = case, tol
        self.found: list[Mismatch] = []

    def add(self, kind: str, a: Any, b: Any, path: str = "") -> None:
        self.found.append(Mismatch(self.case, kind, a, b, path))

    def check(self, kind: str, a: Any, b: Any, path: str = "") -> None:
        if a != b:
            self.add(kind, a, b, path)


def _compare_errors(diff: _Diff, a: Reply, b: Reply) -> None:
    if a.status != b.status:
        diff.add("status_code", summary(a), summary(b))
    err_a = a.body.get("error") if isinstance(a.body, dict) else None
    if not isinstance(err_a, dict) or not all(k in err_a and isinstance(err_a[k], t) for k, t in ERROR_KEYS.items()):
        diff.add("error_shape", a.body if a.body is not None else a.text, '{"error": {message, type, param, code}}')
        return
    err_b = b.body.get("error") if isinstance(b.body, dict) else None
    param_b = err_b.get("param") if isinstance(err_b, dict) else None
    if isinstance(param_b, str):
        diff.check("error_param", _field(err_a.get("param")), param_b.removeprefix(BODY_LOCATION))


def _compare_answers(diff: _Diff, case: Case, a: Reply, b: Reply, servers: tuple[Server, Server]) -> None:
    if bool(a.events) != bool(b.events):
        diff.add("stream_format", "SSE" if a.events else "JSON", "SSE" if b.events else "JSON")
        return
    if case.stream:
        diff.check("stream_done", a.done, b.done)
    for path, in_a, in_b in shape_diff(_paths(a), _paths(b)):
        diff.add("key", in_a, in_b, path)
    out_a, out_b = outcome(a), outcome(b)
    diff.check("stream_error", out_a.errors, out_b.errors)
    diff.check("model", sorted(out_a.models), [servers[0].model] if out_a.models else [])
    diff.check("model", [servers[1].model] if out_b.models else [], sorted(out_b.models))
    diff.check("object", sorted(out_a.objects), sorted(out_b.objects))
    _compare_outcomes(diff, case.exact, out_a, out_b)


def _paths(reply: Reply) -> set[str]:
    return stream_key_paths(reply.events) if reply.events else key_paths(reply.body)


def _compare_outcomes(diff: _Diff, exact: bool, a: Outcome, b: Outcome) -> None:
    diff.check("choices", sorted(a.choices), sorted(b.choices))
    diff.check("prompt_token_ids", a.prompt_token_ids, b.prompt_token_ids)
    _compare_usage(diff, exact, a.usage, b.usage)
    _compare_prompt_logprobs(diff, a.prompt_logprobs, b.prompt_logprobs, "prompt_logprobs")
    for index in sorted(set(a.choices) & set(b.choices)):
        _compare_choice(diff, exact, f"choices[{index}]", a.choices[index], b.choices[index])


def _compare_usage(diff: _Diff, exact: bool, a: dict[str, Any] | None, b: dict[str, Any] | None) -> None:
    if (a is None) != (b is None):
        diff.add("usage", a, b, "usage")
        return
    keys = ("prompt_tokens", "completion_tokens", "total_tokens") if exact else ("prompt_tokens",)
    for key in keys:
        diff.check("usage", (a or {}).get(key), (b or {}).get(key), f"usage.{key}")


def _compare_choice(diff: _Diff, exact: bool, path: str, a: Choice, b: Choice) -> None:
    diff.check("prompt_token_ids", a.prompt_token_ids, b.prompt_token_ids, f"{path}.prompt_token_ids")
    _compare_prompt_logprobs(diff, a.prompt_logprobs, b.prompt_logprobs, f"{path}.prompt_logprobs")
    if not exact:
        return
    diff.check("text", a.text, b.text, f"{path}.text")
    diff.check("token_ids", a.token_ids, b.token_ids, f"{path}.token_ids")
    diff.check("finish_reason", a.finish_reason, b.finish_reason, f"{path}.finish_reason")
    diff.check("stop_reason", a.stop_reason, b.stop_reason, f"{path}.stop_reason")
    diff.check("tool_calls", a.tool_calls, b.tool_calls, f"{path}.tool_calls")
    _compare_logprobs(diff, a.logprobs, b.logprobs, f"{path}.logprobs")


def _compare_logprobs(diff: _Diff, a: list[TokenLogprob] | None, b: list[TokenLogprob] | None, path: str) -> None:
    if a is None or b is None or len(a) != len(b):
        diff.check("logprobs", _count(a), _count(b), f"{path}.length")
        return
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        where = f"{path}[{i}]"
        diff.check("logprobs", x.token, y.token, f"{where}.token")
        diff.check("logprobs", x.extra, y.extra, f"{where}.bytes_or_offset")
        if not close(x.logprob, y.logprob, diff.tol):
            diff.add("logprobs", x.logprob, y.logprob, f"{where}.logprob")
        if not _close_maps(x.top, y.top, diff.tol):
            diff.add("logprobs", x.top, y.top, f"{where}.top_logprobs")


def _compare_prompt_logprobs(diff: _Diff, a: Any, b: Any, path: str) -> None:
    """vLLM's shape: a list with one entry per prompt token, ``None`` for the first, else
    token id → ``{"logprob", "rank", "decoded_token"}``."""
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        diff.check("prompt_logprobs", _count(a), _count(b), f"{path}.length")
        return
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not isinstance(x, dict) or not isinstance(y, dict):
            diff.check("prompt_logprobs", x, y, f"{path}[{i}]")
            continue
        if set(x) != set(y):
            diff.add("prompt_logprobs", sorted(x), sorted(y), f"{path}[{i}].tokens")
            continue
        for token in x:
            ex, ey = x[token], y[token]
            same = close(ex.get("logprob"), ey.get("logprob"), diff.tol)
            same = same and ex.get("decoded_token") == ey.get("decoded_token")
            if not same or ex.get("rank") != ey.get("rank"):
                diff.add("prompt_logprobs", ex, ey, f"{path}[{i}].{token}")


def close(a: Any, b: Any, tol: float) -> bool:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return bool(a == b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


def _close_maps(a: dict[str, Any], b: dict[str, Any], tol: float) -> bool:
    return set(a) == set(b) and all(close(a[k], b[k], tol) for k in a)


def _count(value: Any) -> Any:
    return len(value) if isinstance(value, list) else value


def _field(param: Any) -> Any:
    return param.removeprefix(BODY_LOCATION) if isinstance(param, str) else param

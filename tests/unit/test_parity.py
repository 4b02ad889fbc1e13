"""The parity tool's comparer and battery, on hand-made answers (no servers)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pdserve.tools.parity.cases import CHAT, COMPLETIONS, MODEL, Case, battery
from pdserve.tools.parity.client import Reply, Server, parse_sse, request_body
from pdserve.tools.parity.compare import LOGPROB_ABS_TOL, compare
from pdserve.tools.parity.known import load, triage
from pdserve.tools.parity.shape import key_paths, shape_diff, stream_key_paths

SERVERS = (Server("http://a", "m"), Server("http://b", "m"))
CHAT_CASE = Case("chat.x", CHAT, {"model": MODEL, "messages": []})
STREAM_CASE = Case("cmpl.x.stream", COMPLETIONS, {"model": MODEL, "prompt": "p", "stream": True}, stream=True)


def chat_body(content: str = "Paris.", logprob: float = -0.5) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "token_ids": [1, 2],
                "logprobs": {"content": [{"token": "Paris", "logprob": logprob, "bytes": [80], "top_logprobs": []}]},
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "prompt_tokens_details": None},
    }


def kinds(mismatches: list[Any]) -> list[tuple[str, str]]:
    return [(m.kind, m.path) for m in mismatches]


def test_battery_is_large_unique_and_covers_both_routes_and_streams() -> None:
    cases = battery()
    assert len(cases) >= 120
    assert len({c.id for c in cases}) == len(cases)
    assert {c.route for c in cases} == {CHAT, COMPLETIONS}
    assert any(c.stream for c in cases) and any(not c.stream for c in cases)
    assert all(c.body.get("stream", False) == c.stream for c in cases)


def test_the_model_placeholder_becomes_each_servers_name_and_absent_fields_are_left_out() -> None:
    by_id = {c.id: c for c in battery()}
    assert request_body(by_id["chat.greedy"], "mine")["model"] == "mine"
    assert "model" not in request_body(by_id["chat.model.absent"], "mine")
    assert request_body(by_id["chat.model.null"], "mine")["model"] is None


def test_equal_answers_differing_only_in_ignored_fields_match() -> None:
    a, b = chat_body(), chat_body()
    b["id"], b["created"], b["usage"]["prompt_tokens_details"] = "other", 2, {"cached_tokens": 3}
    assert compare(CHAT_CASE, Reply(200, a), Reply(200, b), SERVERS) == []


def test_text_key_and_logprob_differences_are_reported_with_paths() -> None:
    a, b = chat_body("Lyon."), chat_body(logprob=-0.5 - 10 * LOGPROB_ABS_TOL)
    b["choices"][0]["stop_reason"] = None
    found = kinds(compare(CHAT_CASE, Reply(200, a), Reply(200, b), SERVERS))
    assert ("text", "choices[0].text") in found
    assert ("key", "choices[].stop_reason") in found
    assert ("logprobs", "choices[0].logprobs[0].logprob") in found


def test_logprobs_within_tolerance_match() -> None:
    a, b = chat_body(logprob=-0.5), chat_body(logprob=-0.5 + LOGPROB_ABS_TOL / 2)
    assert compare(CHAT_CASE, Reply(200, a), Reply(200, b), SERVERS) == []


def test_inexact_cases_compare_shape_not_text() -> None:
    case = Case("chat.sampled", CHAT, {}, exact=False)
    assert compare(case, Reply(200, chat_body("x")), Reply(200, chat_body("y")), SERVERS) == []


def test_status_classes_5xx_and_error_param() -> None:
    ok = Reply(200, chat_body())
    bad_a = Reply(400, {"error": {"message": "no", "type": "invalid_request_error", "param": "n", "code": None}})
    bad_b = Reply(400, {"error": {"message": "no", "type": "BadRequestError", "param": "top_k", "code": 400}})
    assert kinds(compare(CHAT_CASE, bad_a, ok, SERVERS)) == [("status", "")]
    assert kinds(compare(CHAT_CASE, Reply(500, text="boom"), Reply(500, text="boom"), SERVERS)) == [
        ("server_error", "")
    ]
    [param] = compare(CHAT_CASE, bad_a, bad_b, SERVERS)
    assert (param.kind, param.a, param.b) == ("error_param", "n", "top_k")
    assert kinds(compare(CHAT_CASE, Reply(400, {"detail": "x"}), bad_b, SERVERS)) == [("error_shape", "")]


def test_a_stream_is_reassembled_from_its_chunks() -> None:
    def chunk(text: str, ids: list[int], reason: str | None) -> str:
        choice = {"index": 0, "text": text, "token_ids": ids, "finish_reason": reason}
        return "data: " + json.dumps({"id": "x", "object": "text_completion", "model": "m", "choices": [choice]})

    whole = "\n\n".join([chunk("Par", [1], None), chunk("is", [2], "length"), "data: [DONE]"])
    split = "\n\n".join([chunk("P", [1], None), chunk("aris", [2], None), chunk("", [], "length"), "data: [DONE]"])
    a, b = Reply(200, events=parse_sse(whole)[0], done=True), Reply(200, events=parse_sse(split)[0], done=True)
    assert compare(STREAM_CASE, a, b, SERVERS) == []
    b_cut = Reply(200, events=parse_sse(split)[0][:2], done=False)
    found = kinds(compare(STREAM_CASE, a, b_cut, SERVERS))
    assert found == [
        ("stream_done", ""),
        ("key", "choices[].finish_reason"),
        ("finish_reason", "choices[0].finish_reason"),
    ]


def test_stream_shapes_ignore_nulls_that_depend_on_chunking() -> None:
    one = [{"choices": [{"text": "ab", "finish_reason": "stop"}]}]
    two = [{"choices": [{"text": "a", "finish_reason": None}]}, {"choices": [{"text": "b", "finish_reason": "stop"}]}]
    assert stream_key_paths(one) == stream_key_paths(two)
    assert "choices[].finish_reason:null" in stream_key_paths([two[0]])


def test_shape_diff_reports_the_topmost_missing_path_only() -> None:
    a = {"x": {"y": {"z": 1}}, "data": [{"k": "v"}]}
    b = copy.deepcopy(a)
    del b["x"]["y"]
    assert list(shape_diff(key_paths(a), key_paths(b))) == [("x.y", "object", "absent")]
    assert key_paths({"prompt_logprobs": [None, {"12": {"logprob": -1.0}}]}) >= {"prompt_logprobs[].*:object"}


def test_known_entries_match_by_glob_and_unused_ones_are_stale(tmp_path: Path) -> None:
    path = tmp_path / "known.json"
    entries = [
        {"case": "chat.n.*", "kind": "status", "what": "n", "why": "later"},
        {"case": "cmpl.gone", "what": "fixed", "why": "was a bug"},
    ]
    path.write_text(json.dumps({"known": entries}))
    bad = Reply(400, {"error": {"message": "no", "type": "t", "param": "n", "code": None}})
    found = compare(Case("chat.n.2", CHAT, {}), bad, Reply(200, chat_body()), SERVERS)
    found += compare(CHAT_CASE, Reply(200, chat_body("a")), Reply(200, chat_body("b")), SERVERS)
    t = triage(found, load(path))
    assert [m.case for m, _ in t.known] == ["chat.n.2"]
    assert [m.kind for m in t.unknown] == ["text"]
    assert [k.case for k in t.stale] == ["cmpl.gone"]


def test_a_known_entry_needs_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "known.json"
    path.write_text(json.dumps({"known": [{"case": "x", "what": "y"}]}))
    with pytest.raises(ValueError, match="why"):
        load(path)

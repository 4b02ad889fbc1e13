"""Fuzzing the router's HTTP surface: schemathesis cases generated from its own OpenAPI
document (valid and invalid bodies), then hand-written malformed bodies. A live router
over sim workers (real processes, real gRPC). Every answer must be a non-5xx status;
every error an OpenAI-shaped body; the router must still serve afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from pdserve.tools.procs import Procs
from tests.helpers.simfleet import ZERO, sim_worker, start_router

MAX_BODY = 64 * 1024  # small, so the fuzzer and the tests below reach it


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[str]:
    with Procs(tmp_path_factory.mktemp("fuzz")) as procs:
        prefill, decode = sim_worker(procs, "prefill", profile=ZERO), sim_worker(procs, "decode", profile=ZERO)
        _, url = start_router(procs, default_model, prefill, decode, "--max-body-bytes", str(MAX_BODY))
        yield url
        log = (procs.log_dir / "router.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]  # nothing went unhandled, even in the log


def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every non-2xx answer is ``{"error": {"message": str, "type": str, ...}}``."""
    if response.status_code < 400:
        return
    error = response.json().get("error")
    assert isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
    assert "Traceback" not in response.text


def no_server_error(ctx: Any, response: Any, case: Any) -> None:
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text[:500])


# (schemathesis' own pytest plugin does not load under pytest 9: its Python API is used instead)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_server_error(router: str, mode: GenerationMode) -> None:
    """Bodies from the router's own OpenAPI document — valid ones (positive) and ones that
    break it (negative). Neither may get a 5xx or an error in another shape. A negative body
    is not required to be refused: where vLLM's models (pydantic, lax) read a value as the
    declared type (``true`` as 1, ``"on"`` as true), the router reads it so too, as the
    reference server does (DESIGN §7). Any role is a valid chat role now, so such bodies
    reach the field checks and are accepted."""
    checks = [no_server_error, openai_error_shape]
    operations = [
        result.ok() for result in schemathesis.openapi.from_url(f"{router}/openapi.json").get_all_operations()
    ]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions"}
    model = httpx.get(f"{router}/v1/models", timeout=10).json()["data"][0]["id"]
    for operation in operations:
        if mode.is_negative and (operation.method.upper() != "POST" or not operation.body):
            continue  # nothing to break in a request without a body (GET, POST /ping)

        strategy = operation.as_strategy(generation_mode=mode)
        if not mode.is_negative:  # valid bodies name the served model, so they reach the workers
            strategy = strategy.map(_served(model))

        @given(case=strategy)
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            case.call_and_validate(base_url=router, checks=checks, timeout=60)

        call()


def _served(model: str) -> Any:
    def name_it(case: Any) -> Any:
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        return case

    return name_it


RAW: list[tuple[str, bytes, str]] = [
    ("empty", b"", "application/json"),
    ("truncated", b'{"model": "smollm2-135m-instruct", "prompt": "x"', "application/json"),
    ("null", b"null", "application/json"),
    ("array", b"[1, 2, 3]", "application/json"),
    ("string", b'"hello"', "application/json"),
    ("not utf-8", b'{"model": "\xff\xfe", "prompt": "x"}', "application/json"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("NaN temperature", b'{"model": "M", "prompt": "x", "temperature": NaN}', "application/json"),
    ("Infinity top_p", b'{"model": "M", "prompt": "x", "top_p": Infinity}', "application/json"),
    ("huge seed", b'{"model": "M", "prompt": "x", "seed": 100000000000000000000000000000}', "application/json"),
    ("huge max_tokens", b'{"model": "M", "prompt": "x", "max_tokens": 1e400}', "application/json"),
    ("huge token id", b'{"model": "M", "prompt": [99999999999999999999999]}', "application/json"),
    ("negative token id", b'{"model": "M", "prompt": [-1]}', "application/json"),
    ("huge stop_token_id", b'{"model": "M", "prompt": "x", "stop_token_ids": [1e30]}', "application/json"),
    ("huge min_tokens", b'{"model": "M", "prompt": "x", "min_tokens": 99999999999999999999}', "application/json"),
    ("huge top_k", b'{"model": "M", "prompt": "x", "top_k": 99999999999999999999}', "application/json"),
    ("wrong types", b'{"model": 5, "prompt": {"a": 1}, "stream": "yes"}', "application/json"),
    ("text/plain", b'{"model": "M", "prompt": "x"}', "text/plain"),
    ("form", b"model=M&prompt=x", "application/x-www-form-urlencoded"),
    ("nul bytes", b'{"model": "M", "prompt": "a\\u0000b", "stop": ["\\u0000"]}', "application/json"),
    ("lone surrogate", b'{"model": "M", "prompt": "\\ud800"}', "application/json"),
    ("oversized", b'{"model": "M", "prompt": "' + b"x" * (MAX_BODY + 1) + b'"}', "application/json"),
]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_bodies_get_openai_shaped_4xx(router: str, path: str) -> None:
    model = httpx.get(f"{router}/v1/models", timeout=10).json()["data"][0]["id"]
    for name, raw, content_type in RAW:
        body = raw.replace(b'"M"', json.dumps(model).encode())
        resp = httpx.post(f"{router}{path}", content=body, headers={"Content-Type": content_type}, timeout=60)
        if resp.status_code == 200:  # some are valid requests for one of the two routes
            continue
        assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text[:300])
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["type"], (name, error)
        assert "Traceback" not in resp.text, name
    assert httpx.get(f"{router}/v1/completions", timeout=10).status_code == 405
    assert httpx.get(f"{router}/v2/nothing", timeout=10).json()["error"]["message"]
    ok = httpx.post(f"{router}{path}", json=_valid(path, model), timeout=60)
    assert ok.status_code == 200, ok.text  # still serving


def _valid(path: str, model: str) -> dict[str, Any]:
    if path.endswith("chat/completions"):
        return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return {"model": model, "prompt": "hi", "max_tokens": 4}

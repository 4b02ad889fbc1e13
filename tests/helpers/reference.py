"""Greedy reference outputs of tests/e2e/prompts.py CASES from one colocated vLLM engine
(tests/e2e/reference_engine.py), run as a background process: start it, collect it later."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pdserve.lifetime import launch_env
from tests.helpers.cluster import engine_env
from tests.helpers.net import REPO
from tests.helpers.processes import kill_tree

# A backstop for a run that neither finishes nor exits (one engine start, 6 short generations).
TIMEOUT_S = 900.0


@dataclass(frozen=True)
class ReferenceRun:
    proc: subprocess.Popen[bytes]
    tmp: Path  # in.json, out.json, log
    names: list[str]  # the CASES' names, in the order of the spec's prompts
    prompts: list[list[int]]


def start_reference(tmp: Path, model: Path, tokenizer) -> ReferenceRun:  # type: ignore[no-untyped-def]
    from tests.e2e.prompts import CASES, MAX_TOKENS, prompt_ids

    spec = {
        "model": str(model),
        "prompts": [prompt_ids(tokenizer, c) for c in CASES],
        "max_tokens": MAX_TOKENS,
        "stop_token_ids": list(tokenizer.eos_token_ids),
        "block_size": 128,
        "dtype": engine_env().get("PDSERVE_DTYPE", "auto"),
        "max_model_len": 2048,
    }
    (tmp / "in.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests/e2e/reference_engine.py"), str(tmp / "in.json"), str(tmp / "out.json")],
        env=launch_env(engine_env()),
        stdout=(tmp / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    return ReferenceRun(proc, tmp, [c.name for c in CASES], spec["prompts"])


def reference_outputs(run: ReferenceRun, timeout_s: float = TIMEOUT_S) -> dict[str, dict]:
    """{case name: {"prompt": ids, "output": ids}} once the run has finished."""
    try:
        code = run.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop_reference(run)
        raise
    if code != 0:
        tail = (run.tmp / "log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the reference engine exited with {code}; see {run.tmp / 'log'}:\n{tail}")
    outputs = json.loads((run.tmp / "out.json").read_text())["outputs"]
    return {n: {"prompt": p, "output": o} for n, p, o in zip(run.names, run.prompts, outputs, strict=True)}


def stop_reference(run: ReferenceRun) -> None:
    if run.proc.poll() is None:
        kill_tree(run.proc.pid)
    run.proc.wait()

"""``python -m pdserve.tools.parity --a URL --b URL``: the battery against two servers.

Prints a table of the mismatches not listed in ``--known``, writes every result to
``--out``; exits 0 when every mismatch is a known one, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import httpx

from pdserve.flags import add_flags, build, flag
from pdserve.tools.parity import known as known_file
from pdserve.tools.parity.cases import SUITES
from pdserve.tools.parity.client import Server
from pdserve.tools.parity.compare import LOGPROB_ABS_TOL, Mismatch, summary
from pdserve.tools.parity.run import CaseResult, run_battery
from pdserve.tools.parity.sdk import sdk_mismatches


@dataclass(frozen=True)
class ParityConfig:
    """The flags: two servers, and what to do with the differences."""

    a: str = flag(help="base URL of server A, the one under test (no /v1), e.g. http://127.0.0.1:8000")
    b: str = flag(help="base URL of server B, the reference (e.g. `vllm serve`)")
    model_a: str = flag("", help="model name to send to A (default: the first model A lists)")
    model_b: str = flag("", help="model name to send to B (default: the first model B lists)")
    known: str = flag("", help="known-differences JSON (docs/parity_known.json); none: every mismatch counts")
    out: str = flag("", help="write every case's statuses and every mismatch here (JSON)")
    only: str = flag("*", help="run only the cases whose id matches this glob, e.g. 'chat.stop.*'")
    suite: str = flag(
        "default",
        choices=tuple(SUITES),
        help="default: both servers as started plain; tools: both started with the same tool-capable "
        "--chat-template and --tool-call-parser hermes --enable-auto-tool-choice",
    )
    concurrency: int = flag(4, help="cases in flight at once (batching did not change greedy outputs: docs/parity.md)")
    logprob_tol: float = flag(LOGPROB_ABS_TOL, help="largest absolute difference of two equal logprobs")
    sdk: bool = flag(True, name="--no-sdk", negate=True, help="skip the check through the openai SDK")


@dataclass(frozen=True)
class Report:
    results: list[CaseResult]
    triage: known_file.Triage
    seconds: float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdserve.tools.parity", description=__doc__)
    add_flags(parser, ParityConfig)
    try:
        cfg = build(ParityConfig, parser.parse_args(argv))
        known = known_file.load(Path(cfg.known)) if cfg.known else []
    except ValueError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run(cfg, known))
    print(render(report))
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(report_json(report), indent=1, default=str))
    return 1 if report.triage.unknown else 0


async def run(cfg: ParityConfig, known: list[known_file.KnownDifference]) -> Report:
    servers = (
        Server(cfg.a.rstrip("/"), cfg.model_a or first_model(cfg.a)),
        Server(cfg.b.rstrip("/"), cfg.model_b or first_model(cfg.b)),
    )
    cases = [c for c in SUITES[cfg.suite]() if fnmatchcase(c.id, cfg.only)]
    start = time.monotonic()
    results = await run_battery(servers, cases, cfg.concurrency, cfg.logprob_tol)
    found = [m for r in results for m in r.mismatches]
    if cfg.sdk and cfg.suite == "default" and fnmatchcase("sdk.chat", cfg.only):
        found += await sdk_mismatches(servers)
    return Report(results, known_file.triage(found, known), time.monotonic() - start)


def first_model(url: str) -> str:
    return str(httpx.get(f"{url.rstrip('/')}/v1/models", timeout=30).json()["data"][0]["id"])


def render(report: Report, width: int = 60) -> str:
    """The unknown mismatches as a table, then one line of totals and the stale entries."""
    t = report.triage
    lines = [table(t.unknown, width)] if t.unknown else []
    lines.append(
        f"{len(report.results)} cases in {report.seconds:.0f} s: {len(t.unknown)} unknown mismatches, "
        f"{len(t.known)} known"
    )
    lines += [f"stale known entry (matched nothing): {k.case} {k.kind} {k.path}" for k in t.stale]
    return "\n".join(lines)


def table(mismatches: list[Mismatch], width: int = 60) -> str:
    """One row per distinct (kind, path, A, B), with the cases showing it."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for m in mismatches:
        groups.setdefault((m.kind, m.path, _cell(m.a, width), _cell(m.b, width)), []).append(m.case)
    rows = [("CASES", "KIND", "PATH", "A", "B")]
    rows += [(_cases(cases), *key) for key, cases in groups.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip() for r in rows)


def _cases(cases: list[str], shown: int = 2) -> str:
    more = f" +{len(cases) - shown}" if len(cases) > shown else ""
    return ",".join(cases[:shown]) + more


def _cell(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def report_json(report: Report) -> dict[str, Any]:
    t = report.triage
    return {
        "seconds": round(report.seconds, 1),
        "cases": [
            {"id": r.case.id, "a": summary(r.a), "b": summary(r.b), "seconds": [r.a.seconds, r.b.seconds]}
            for r in report.results
        ],
        "unknown": [m.as_dict() for m in t.unknown],
        "known": [{**m.as_dict(), "why": k.why} for m, k in t.known],
        "stale_known": [vars(k) for k in t.stale],
    }


if __name__ == "__main__":
    sys.exit(main())

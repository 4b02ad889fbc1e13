"""What every ``pdserve bench compare`` run writes: JSON, PNG and a markdown table per
comparison, with the machine and command that made them; and the output/SLO flags
each comparison declares."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pdserve.tools.bench.client import Timing
from pdserve.tools.bench.report import plot, raw, write_json

LATENCY_COLS = (
    ("TTFT p50 ms", "ttft_p50_s", 1000.0),
    ("TTFT p90 ms", "ttft_p90_s", 1000.0),
    ("TTFT p99 ms", "ttft_p99_s", 1000.0),
    ("ITL p50 ms", "itl_p50_s", 1000.0),
    ("ITL p99 ms", "itl_p99_s", 1000.0),
    ("e2e p50 ms", "e2e_p50_s", 1000.0),
    ("e2e p99 ms", "e2e_p99_s", 1000.0),
    ("out tok/s", "output_tok_s", 1.0),
    ("goodput req/s", "goodput_req_s", 1.0),
    ("cached %", "cached_ratio", 100.0),
    ("errors", "errors", 1.0),
)


def machine() -> str:
    return f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"


def table(rows: dict[str, dict[str, Any]], cols: Sequence[tuple[str, str, float]]) -> str:
    """Markdown: one row per run; ``cols`` = (header, summary key, scale)."""
    head = "| run | " + " | ".join(h for h, _, _ in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, s in rows.items():
        cells = [f"{s[k] * scale:.3g}" if isinstance(s[k], float) else str(s[k]) for _, k, scale in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finish(out: Path, kind: str, args: argparse.Namespace, runs: dict[str, list[Timing]], summaries: dict) -> None:
    text = table(summaries, LATENCY_COLS)
    meta = {"kind": kind, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "command": sys.argv}
    data = {**meta, "args": vars(args), "summaries": summaries, "requests": {n: raw(t) for n, t in runs.items()}}
    write_json(out / f"{kind}.json", data)
    plot(out / f"{kind}.png", runs, summaries, f"pdserve bench compare {kind}")
    (out / f"{kind}.md").write_text(text + "\n")
    print(f"\n{meta['machine']}, {meta['date']}\n\n{text}\n")


def output_and_slo(p: argparse.ArgumentParser, output_tokens: int, slo_ttft: float, slo_tpot: float) -> None:
    # Per comparison, not in the shared parent: argparse parents share their Action
    # objects, so one subcommand's set_defaults would change every other's default.
    p.add_argument("--output-tokens", type=int, default=output_tokens, help="output tokens per request")
    p.add_argument("--slo-ttft", type=float, default=slo_ttft, help="TTFT SLO, seconds")
    p.add_argument("--slo-tpot", type=float, default=slo_tpot, help="time per output token SLO, seconds")

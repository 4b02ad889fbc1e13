"""Summarize deploy/gpu/ratios.sh: one row per (mix, rate, topology), JSON + markdown.

Usage: python3 deploy/gpu/ratios_summary.py OUT --gpus N --engine vllm|sim
Reads OUT/ratios-<topology>-<mix>.json (``pdserve bench load`` output) and writes
OUT/ratios-summary.json and OUT/ratios-summary.md. Goodput is requests per second that
met both SLOs (TTFT and TPOT, as the load files state them); per GPU divides it by the
GPUs the topology used, so 1P:1D on a 4-GPU host is compared fairly with 4 colocated.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

_FILE = re.compile(r"ratios-(coloc|(\d+)p(\d+)d)-(long|chat)\.json$")


def topology(match: re.Match[str], gpus: int) -> tuple[str, int]:
    if match.group(1) == "coloc":
        return f"colocated x{gpus}", gpus
    p, d = int(match.group(2)), int(match.group(3))
    return f"{p}P:{d}D", p + d


def rows(out: Path, gpus: int) -> list[dict[str, Any]]:
    found = []
    for path in sorted(out.glob("ratios-*.json")):
        m = _FILE.search(path.name)
        if m is None:
            continue
        name, used = topology(m, gpus)
        data = json.loads(path.read_text())
        for rate, s in data["rates"].items():
            found.append(
                {
                    "mix": m.group(4),
                    "rate": float(rate),
                    "topology": name,
                    "gpus": used,
                    "requests": s["requests"],
                    "errors": s["errors"],
                    "goodput_req_s": s["goodput_req_s"],
                    "goodput_per_gpu": s["goodput_req_s"] / used,
                    "slo_attainment": s["slo_attainment"],
                    "ttft_p50_s": s["ttft_p50_s"],
                    "ttft_p99_s": s["ttft_p99_s"],
                    "tpot_p50_s": s["tpot_p50_s"],
                    "tpot_p90_s": s["tpot_p90_s"],
                    "itl_p99_s": s["itl_p99_s"],
                    "output_tok_s": s["output_tok_s"],
                    "cached_ratio": s.get("cached_ratio", 0.0),
                    "slo": data["slo"],
                }
            )
    return sorted(found, key=lambda r: (r["mix"], r["rate"], r["topology"]))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds == seconds else "-"  # NaN: no successful request


def markdown(found: list[dict[str, Any]], engine: str) -> str:
    if not found:
        return "no results\n"
    slo = found[0]["slo"]
    lines = [
        f"Engine: {engine}. SLO: TTFT ≤ {slo['ttft_s']} s and TPOT ≤ {slo['tpot_s'] * 1e3:.0f} ms.",
        "",
        "| mix | rate | topology | GPUs | goodput (req/s) | per GPU | SLO met | TTFT p50 | TTFT p99 "
        "| TPOT p50 | TPOT p90 | ITL p99 | out tok/s | cached | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in found:
        lines.append(
            f"| {r['mix']} | {r['rate']:g} | {r['topology']} | {r['gpus']} | {r['goodput_req_s']:.2f} "
            f"| {r['goodput_per_gpu']:.2f} | {r['slo_attainment']:.0%} | {_ms(r['ttft_p50_s'])} "
            f"| {_ms(r['ttft_p99_s'])} | {r['tpot_p50_s'] * 1e3:.1f} ms | {r['tpot_p90_s'] * 1e3:.1f} ms "
            f"| {r['itl_p99_s'] * 1e3:.1f} ms | {r['output_tok_s']:.0f} | {r['cached_ratio']:.0%} | {r['errors']} |"
        )
    for key, title in (("goodput_req_s", "Most goodput"), ("goodput_per_gpu", "Most goodput per GPU")):
        lines += ["", f"{title}, per mix and rate:", ""]
        best: dict[tuple[str, float], dict[str, Any]] = {}
        for r in found:
            at = (r["mix"], r["rate"])
            if at not in best or r[key] > best[at][key]:
                best[at] = r
        for (mix, rate), r in sorted(best.items()):
            lines.append(
                f"- {mix} @ {rate:g} req/s: {r['topology']} ({r[key]:.2f} req/s{' per GPU' * (key != 'goodput_req_s')})"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--engine", default="vllm")
    args = parser.parse_args()
    found = rows(args.out, args.gpus)
    (args.out / "ratios-summary.json").write_text(json.dumps({"engine": args.engine, "rows": found}, indent=1))
    text = markdown(found, args.engine)
    (args.out / "ratios-summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Summaries, JSON and PNG plots of benchmark runs.

Percentiles are over successful requests. TPOT of a request is (e2e - TTFT) /
(output tokens - 1); ITL percentiles are over every gap between streamed chunks.
Goodput counts requests per second that met BOTH the TTFT and the TPOT SLO
(DistServe's definition); errors count against it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pdserve.tools.bench.client import Timing, percentile


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    tpot_s: float


def tpot(t: Timing) -> float:
    return (t.e2e_s - t.ttft_s) / max(1, t.completion_tokens - 1)


def _pcts(prefix: str, values: list[float]) -> dict[str, float]:
    return {f"{prefix}_p{q}_s": percentile(values, q) for q in (50, 90, 99)}


def summarize(timings: Sequence[Timing], wall_s: float, slo: Slo) -> dict[str, Any]:
    ok = [t for t in timings if not t.error]
    good = [t for t in ok if t.ttft_s <= slo.ttft_s and tpot(t) <= slo.tpot_s]
    prompt = sum(t.prompt_tokens for t in ok)
    errors = sorted({t.error for t in timings if t.error})
    return {
        "requests": len(timings),
        "errors": len(timings) - len(ok),
        "error_kinds": errors[:5],
        "wall_s": wall_s,
        **_pcts("ttft", [t.ttft_s for t in ok]),
        **_pcts("itl", [x for t in ok for x in t.itl_s]),
        **_pcts("tpot", [tpot(t) for t in ok]),
        **_pcts("e2e", [t.e2e_s for t in ok]),
        "output_tok_s": sum(t.completion_tokens for t in ok) / wall_s if wall_s > 0 else 0.0,
        "req_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "goodput_req_s": len(good) / wall_s if wall_s > 0 else 0.0,
        "slo": asdict(slo),
        "slo_attainment": len(good) / max(1, len(timings)),
        "prompt_tokens": prompt,
        "cached_ratio": sum(t.cached_tokens for t in ok) / prompt if prompt else 0.0,
    }


def raw(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    """Per request, so any figure can be recomputed (another SLO, another percentile)."""
    return [
        {
            "start": round(t.start_s, 4),
            "prompt": t.prompt_tokens,
            "cached": t.cached_tokens,
            "out": t.completion_tokens,
            "ttft": round(t.ttft_s, 5),
            "e2e": round(t.e2e_s, 5),
            "err": t.error,
        }
        for t in timings
    ]


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def plot(
    path: Path, runs: Mapping[str, Sequence[Timing]], summaries: Mapping[str, Mapping[str, Any]], title: str
) -> None:
    """TTFT CDF, ITL CDF and goodput bars of each named run, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, timings in runs.items():
        ok = [t for t in timings if not t.error]
        for ax, values in ((axes[0], [t.ttft_s for t in ok]), (axes[1], [x for t in ok for x in t.itl_s])):
            xs = sorted(values)
            if xs:
                ax.plot([x * 1000 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], label=name)
    axes[0].set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="time to first token")
    axes[1].set(xlabel="inter-token latency (ms)", title="inter-token latency")
    for ax in axes[:2]:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    names = list(summaries)
    axes[2].bar(names, [summaries[n]["goodput_req_s"] for n in names])
    axes[2].set(title="goodput under the SLO (req/s)")
    axes[2].tick_params(axis="x", rotation=30)
    save_figure(fig, path, title)


def save_figure(fig: Any, path: Path, title: str = "") -> None:
    """Title (when given), lay out and write a bench's matplotlib figure as ``path`` (PNG,
    its folder made), then close it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)

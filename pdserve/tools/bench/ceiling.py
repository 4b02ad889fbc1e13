"""``pdserve bench compare ceiling``: the request rate each router sustains while adding at
most 5 ms at p99, and that rate per router core (issue #17 item 4).

Zero-latency sim workers (``zero`` profile: a step returns at once), so every millisecond
measured is HTTP, routing and the workers' own serving code. Each router and its fleet run
on cores of their own (``taskset``): routers on ``--router-cores``, workers on
``--worker-cores``, the load generator (``pdserve.tools.bench.rawload``: several processes,
a bare HTTP/1.1 client each) on ``--load-cores``. Contenders, each on a fresh fleet:

- direct: the sim-http workers themselves, the generator spreading requests over them;
  the baseline every "added" latency is measured against, rate by rate;
- pdserve prefix-aware with ``--workers`` 1, 2, 4 … over gRPC sim workers;
- sglang-router and vllm-router (``cache_aware``) over the same sim-http workers as direct.

Each offered rate is an open-loop Poisson stream, the same arrivals for every contender.
Per rate: e2e p50/p99, added p50/p99 (minus direct's at the same rate), completed req/s,
errors, the generator's lateness, and the router's CPU (its processes' CPU seconds over
the wall time: cores busy). The ceiling is the highest offered rate at which every request
completed and added p99 ≤ ``--added-p99-ms`` (a router that cannot keep up queues, and its
p99 grows past any bound).
A contender stops after two failing rates in a row, or when its share of ``--budget-s`` (the time
left over the contenders left) has passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from pdserve.tools.bench import contenders as peers
from pdserve.tools.bench import rawload
from pdserve.tools.bench.contenders import MODEL, SimFleetSpec, facades
from pdserve.tools.fleet import start_router, start_sim_worker, wait_router_processes
from pdserve.tools.model import model_from_env
from pdserve.tools.procs import Procs

PEER_ROUTERS = ("sglang-router", "vllm-router")  # the names contenders.py starts them under


def cores(spec: str) -> list[int]:
    """``"0-3,8"`` → [0, 1, 2, 3, 8]."""
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


class PinnedProcs(Procs):
    """``Procs`` whose routers start under ``taskset -c router_cores`` and everything else
    under ``worker_cores`` ("" = not pinned); remembers the routers' pids."""

    def __init__(self, log_dir: Path, router_cores: str, worker_cores: str) -> None:
        super().__init__(log_dir)
        self._router_cores, self._worker_cores = router_cores, worker_cores
        self.routers: list[int] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        router = name == "router" or name in PEER_ROUTERS
        pin = self._router_cores if router else self._worker_cores
        proc = super().start(name, ["taskset", "-c", pin, *argv] if pin else argv, env)
        if router:
            self.routers.append(proc.pid)
        return proc


# A contender starts its router and fleet and returns the URLs the generator sends to.
Contender = Callable[[PinnedProcs, SimFleetSpec], list[str]]


def direct(procs: PinnedProcs, fleet: SimFleetSpec) -> list[str]:
    return [url for url, _ in facades(procs, fleet)]


def pdserve(workers: int) -> Contender:
    def start(procs: PinnedProcs, fleet: SimFleetSpec) -> list[str]:
        common = [*fleet.args(), "--kv-connector", "none"]  # colocated: each prefills its own prompts
        dec = [start_sim_worker(procs, "decode", f"decode{i}", common).address for i in range(fleet.workers)]
        args = ["--policy", "prefix-aware", "--log-level", "WARNING", "--workers", str(workers)]
        router = start_router(procs, model_from_env(), [], dec, args)
        if workers > 1:
            wait_router_processes(router, workers)  # else the first up would get every connection
        return [router.address]

    return start


def peer(contender: peers.Contender) -> Contender:
    return lambda procs, fleet: [contender(procs, fleet).url]


@dataclass
class Row:
    """One contender at one offered rate."""

    rate: float
    served_req_s: float
    requests: int
    errors: int
    e2e_p50_ms: float
    e2e_p99_ms: float
    lag_p99_ms: float  # the generator's lateness: large = the generator, not the server, is the limit
    router_cores_busy: float  # router processes' CPU seconds / wall seconds
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    passed: bool = False
    first_error: str = ""


def _q(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds of these processes and everything under them, so far."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def measure(urls: list[str], rate: float, args: argparse.Namespace, pool: Any, routers: Sequence[int]) -> Row:
    n = args.generators
    points = [
        rawload.Point(
            tuple(urls),
            MODEL,
            rate / n,
            args.duration,
            seed=hash((rate, i)) & 0xFFFFFFFF,
            output_tokens=args.output_tokens,
        )
        for i in range(n)
    ]
    cpu0, t0 = _cpu_s(routers), time.perf_counter()
    samples = rawload.run(points, pool)
    cpu1, wall = _cpu_s(routers), time.perf_counter() - t0
    ok = [s.e2e_s * 1000 for s in samples if not s.error]
    errors = [s.error for s in samples if s.error]
    return Row(
        rate=rate,
        served_req_s=len(ok) / args.duration,
        requests=len(samples),
        errors=len(errors),
        e2e_p50_ms=_q(ok, 50),
        e2e_p99_ms=_q(ok, 99),
        lag_p99_ms=_q([s.lag_s * 1000 for s in samples], 99),
        router_cores_busy=(cpu1 - cpu0) / wall,
        first_error=errors[0] if errors else "",
    )


def _judge(row: Row, base: Row | None, limit_ms: float) -> None:
    if base is not None and base.errors == 0:
        row.added_p50_ms = row.e2e_p50_ms - base.e2e_p50_ms
        row.added_p99_ms = row.e2e_p99_ms - base.e2e_p99_ms
    row.passed = row.errors == 0 and (base is None or (row.added_p99_ms is not None and row.added_p99_ms <= limit_ms))


def sweep(
    name: str, contender: Contender, args: argparse.Namespace, pool: Any, base: dict[float, Row], deadline: float
) -> list[Row]:
    # sim-http takes its model from --model only (not $PDSERVE_MODEL): name it for every worker
    profile = {"profile": "zero", "stream_interval": str(args.stream_interval)}
    fleet = SimFleetSpec(args.workers, profile, model=str(model_from_env()))
    rows: list[Row] = []
    procs = PinnedProcs(args.out / "logs" / name.replace(" ", "_"), args.router_cores, args.worker_cores)
    with procs:
        urls = contender(procs, fleet)
        warm = argparse.Namespace(**{**vars(args), "duration": 1.0})
        measure(urls, min(args.rates), warm, pool, procs.routers)  # connections, caches; not kept
        failed_in_a_row = 0
        for rate in args.rates:
            if time.monotonic() > deadline:
                print(f"{name}: time budget spent; rates from {rate:g} not run", file=sys.stderr)
                break
            row = measure(urls, rate, args, pool, procs.routers)
            _judge(row, base.get(rate) if base else None, args.added_p99_ms)
            rows.append(row)
            print(json.dumps({"run": name, **asdict(row)}), flush=True)
            failed_in_a_row = 0 if row.passed else failed_in_a_row + 1
            if failed_in_a_row == 2:
                break
    return rows


def ceiling(rows: list[Row]) -> Row | None:
    passed = [r for r in rows if r.passed]
    return max(passed, key=lambda r: r.rate) if passed else None


def contenders(args: argparse.Namespace) -> dict[str, Contender]:
    out: dict[str, Contender] = {"direct (no router)": direct}
    for n in args.router_workers:
        out[f"pdserve --workers {n}"] = pdserve(n)
    out["sglang-router cache_aware"] = peer(peers.sglang("cache_aware", args.peers_python))
    out["vllm-router cache_aware"] = peer(peers.vllm_router("cache_aware", args.peers_python))
    return {k: v for k, v in out.items() if k.startswith("direct") or not args.only or any(o in k for o in args.only)}


def run(args: argparse.Namespace) -> int:
    if args.plot_only:
        plot(args.out / "ceiling.png", json.loads(args.plot_only.read_text()))
        return 0
    # SIGTERM (a timeout, the shell script's trap) unwinds like an error: every fleet stops.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.rates = sorted(float(r) for r in args.rates.split(","))
    args.router_workers = [int(n) for n in args.router_workers.split(",")]
    args.only = [o for o in args.only.split(",") if o]
    args.deadline = time.monotonic() + args.budget_s
    args.not_run = {}  # router → why it did not start
    if args.load_cores:
        os.sched_setaffinity(0, cores(args.load_cores))  # the generator processes inherit it
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Row]] = {}
    try:
        with rawload.pool(args.generators) as pool:
            chosen = contenders(args)
            for i, (name, contender) in enumerate(chosen.items()):
                base = {r.rate: r for r in results.get("direct (no router)", [])}
                # each router an equal share of the time left (a slow start cannot starve the ones after
                # it); the direct run first, whole: every router's added latency is against it
                share = (args.deadline - time.monotonic()) / (len(chosen) - i)
                deadline = args.deadline if i == 0 else time.monotonic() + share
                try:
                    results[name] = sweep(name, contender, args, pool, base, deadline)
                except RuntimeError as exc:  # a router that did not start: say so, run the others
                    print(f"{name}: not run: {exc}", file=sys.stderr)
                    results[name], args.not_run[name] = [], str(exc)
    finally:  # stopped early (SIGTERM, Ctrl-C): what was measured is still written
        write(args, results)
    return 0


def write(args: argparse.Namespace, results: dict[str, list[Row]]) -> None:
    router_cores = len(cores(args.router_cores)) or os.cpu_count() or 1
    summary = {}
    for name, rows in results.items():
        top = ceiling(rows)
        summary[name] = {
            "ceiling_req_s": top.rate if top else None,
            "served_req_s": top.served_req_s if top else None,
            "added_p99_ms": top.added_p99_ms if top else None,
            "router_cores_busy": top.router_cores_busy if top else None,
            "req_s_per_busy_core": top.served_req_s / top.router_cores_busy if top and top.router_cores_busy else None,
            "req_s_per_allowed_core": top.served_req_s / router_cores if top and name[0] != "d" else None,
        }
    meta = {
        "kind": "ceiling",
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {_cpu_model()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": sys.argv,
        "cores": {"router": args.router_cores, "workers": args.worker_cores, "load": args.load_cores},
    }
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "deadline", "out")}
    data = {**meta, "args": {**settings, "out": str(args.out)}, "ceilings": summary}
    data["rows"] = {name: [asdict(r) for r in rows] for name, rows in results.items()}
    (args.out / "ceiling.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = _markdown(meta, args, summary, results, router_cores)
    (args.out / "ceiling.md").write_text(text)
    print(text)
    try:
        plot(args.out / "ceiling.png", data)
    except ImportError:  # the GPU image has no matplotlib: plot later with --plot-only
        print("no matplotlib: ceiling.png not drawn (pdserve bench compare ceiling --plot-only ceiling.json)")


def plot(path: Path, data: dict[str, Any]) -> None:
    """Added p50/p99 and router CPU per request against the offered rate, one line per
    router, from a ``ceiling.json`` (``data``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdserve.tools.bench.report import save_figure

    rows = {name: r for name, r in data["rows"].items() if not name.startswith("direct") and r}
    panels = (
        ("added p99 ms (≤ {limit:g}: under the ceiling)", lambda r: r["added_p99_ms"]),
        ("added p50 ms", lambda r: r["added_p50_ms"]),
        ("router CPU ms per request", lambda r: 1000 * r["router_cores_busy"] / r["served_req_s"]),
    )
    limit = float(data["args"].get("added_p99_ms", 5.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, value) in zip(axes, panels, strict=True):
        for name, series in rows.items():
            points = [(r["rate"], value(r)) for r in series if r["served_req_s"] and r["added_p50_ms"] is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=name)
        ax.set(title=title.format(limit=limit), xlabel="offered req/s", xscale="log")
        ax.grid(alpha=0.3)
    axes[0].axhline(limit, color="grey", linestyle="--")
    axes[0].set_yscale("symlog", linthresh=10)
    axes[0].legend(fontsize=7)
    a = data["args"]
    tokens = f"{a.get('output_tokens', 8)} tokens, stream interval {a.get('stream_interval', 1)}"
    save_figure(fig, path, f"pdserve bench compare ceiling: {data['machine'].split(': ', 1)[-1]}, {tokens}")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _markdown(meta: dict, args: argparse.Namespace, summary: dict, results: dict[str, list[Row]], ncores: int) -> str:
    lines = [
        f"{meta['machine']}, {meta['date']}; cores: router {args.router_cores or 'any'}, "
        f"workers {args.worker_cores or 'any'}, load {args.load_cores or 'any'}; {args.workers} zero-profile "
        f"sim workers; {args.output_tokens} streamed tokens a request, stream interval {args.stream_interval}; "
        f"{args.duration:g} s per rate; ceiling: added p99 ≤ {args.added_p99_ms:g} ms, no errors",
        "",
        "| router | ceiling req/s (≥: the top rate passed) | added p99 ms there | router cores busy "
        f"| req/s per busy core | req/s per core ({ncores} allowed) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        if name.startswith("direct"):
            continue
        lines.append(
            f"| {name} | {'≥ ' if s['ceiling_req_s'] == max(args.rates) else ''}{_fmt(s['ceiling_req_s'], 0)} | "
            f"{_fmt(s['added_p99_ms'], 2)} | "
            f"{_fmt(s['router_cores_busy'], 2)} | {_fmt(s['req_s_per_busy_core'], 0)} | "
            f"{_fmt(s['req_s_per_allowed_core'], 0)} |"
        )
    lines += [
        "",
        "| router | offered req/s | served req/s | e2e p50 ms | e2e p99 ms | added p50 ms | added p99 ms "
        "| router cores busy | gen. lag p99 ms | errors | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r.rate:g} | {r.served_req_s:.0f} | {r.e2e_p50_ms:.2f} | {r.e2e_p99_ms:.2f} | "
                f"{_fmt(r.added_p50_ms, 2)} | {_fmt(r.added_p99_ms, 2)} | {r.router_cores_busy:.2f} | "
                f"{r.lag_p99_ms:.2f} | {r.errors} | {'yes' if r.passed else 'no'} |"
            )
    errors = {n: r.first_error for n, rows in results.items() for r in rows if r.first_error}
    lines += ["", *(f"- first error, {n}: `{e}`" for n, e in errors.items())]
    lines += [f"- not run, {n}: {why}" for n, why in args.not_run.items()]
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def add_parser(kinds: Any, common: argparse.ArgumentParser) -> None:
    p = kinds.add_parser("ceiling", parents=[common], help="req/s each router sustains within 5 ms added p99")
    p.add_argument("--rates", default="200,400,700,1000,1400,2000,2800,4000", help="offered req/s, comma-separated")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    p.add_argument("--workers", type=int, default=6, help="sim workers behind every router")
    p.add_argument("--output-tokens", type=int, default=8, help="tokens each request streams")
    p.add_argument(
        "--stream-interval", type=int, default=1, help="the workers' vLLM stream_interval: tokens a message/event"
    )
    p.add_argument("--router-workers", default="1,2,4", help="pdserve --workers values to run")
    p.add_argument("--router-cores", default="", help="taskset list for routers, e.g. 0-3 ('' = not pinned)")
    p.add_argument("--worker-cores", default="", help="taskset list for the sim workers, e.g. 4-9")
    p.add_argument("--load-cores", default="", help="CPU list for the load generator, e.g. 10-15")
    p.add_argument("--generators", type=int, default=2, help="load generator processes")
    p.add_argument("--added-p99-ms", type=float, default=5.0, help="the ceiling's bound on added p99 latency")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop sweeping once this much time has passed")
    p.add_argument("--peers-python", default="", help="a python that imports the peer routers (default: their venv)")
    p.add_argument("--only", default="", help="comma-separated substrings of router names to run (direct always)")
    p.add_argument(
        "--plot-only", type=Path, default=None, help="draw OUT/ceiling.png from this ceiling.json, run nothing"
    )
    p.set_defaults(run=run)

"""``pdserve``: one command for every role, plus the tools (``up``, ``bench``, ``sim-http``).

``router``, ``prefill`` and ``decode`` replace this process with the service's
own entry point (``python -m <service>``), so services never import each other
and each keeps its own ``--help``. The services never convert a model: when the
user names none, this entry point passes the embedded default's directory.
This is the one runtime module that may import ``pdserve.tools``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pdserve.config import setup_logging

SERVICES = {
    "router": "router",
    "prefill": "prefill_worker",
    "decode": "decode_worker",
    "sim-http": "pdserve.tools.sim_http",  # OpenAI HTTP over one sim engine, for peer routers
}
# the services that take --served-model-name (the router learns names from its workers)
_SERVED_NAME = {"prefill", "decode"}


def _exec_service(name: str, argv: list[str]) -> int:
    if name != "sim-http":  # sim-http is a tool: it resolves its own default
        from pdserve.tools.model import with_default_model

        argv = with_default_model(argv, served_name=name in _SERVED_NAME)
    module = SERVICES[name]
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return 1  # unreachable


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVICES:
        return _exec_service(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="pdserve", description="Disaggregated prefill/decode serving on vLLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SERVICES:
        sub.add_parser(name, help=f"run {name} (see `pdserve {name} --help`)", add_help=False)
    from pdserve.tools.bench import calibrate, compare, idle, index, load, pd_vs_colocated, run
    from pdserve.tools.up import add_up_parser

    add_up_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks (see `pdserve bench --help`)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    pd_vs_colocated.add_parser(bench_sub)
    load.add_parser(bench_sub)
    run.add_parser(bench_sub)
    compare.add_parser(bench_sub)
    calibrate.add_parser(bench_sub)
    idle.add_parser(bench_sub)
    index.add_parser(bench_sub)
    args = parser.parse_args(argv)
    setup_logging(os.environ.get("PDSERVE_LOG_LEVEL", "INFO"))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per bench request drowns everything else
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())

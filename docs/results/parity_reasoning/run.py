"""The parity battery's tools suite with a reasoning parser on both servers (issue #14).

`pdserve up` (router and workers all given ``PDSERVE_REASONING_PARSER=qwen3``, so the workers'
engines gate grammars on the end of reasoning as ``vllm serve`` does) against ``vllm serve``
with the same chat template, ``--tool-call-parser hermes --enable-auto-tool-choice
--reasoning-parser qwen3``. Run from the repository root with the venv's python:

    ~/.cache/pdserve/venv/bin/python docs/results/parity_reasoning/run.py OUT_DIR
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from pdserve.tools.model import default_model_dir  # noqa: E402
from pdserve.tools.parity import known as known_file  # noqa: E402
from pdserve.tools.parity.__main__ import ParityConfig, render, report_json, run  # noqa: E402
from tests.helpers.cluster import start_up, stop_up  # noqa: E402
from tests.helpers.vllm_serve import vllm_serve  # noqa: E402

TEMPLATE = str(REPO / "tests/templates/hermes_tools.jinja")
FLAGS = ("--chat-template", TEMPLATE, "--tool-call-parser", "hermes", "--enable-auto-tool-choice")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    os.environ |= {
        "PDSERVE_REASONING_PARSER": "qwen3",
        "PDSERVE_CHAT_TEMPLATE": TEMPLATE,
        "PDSERVE_TOOL_CALL_PARSER": "hermes",
        "PDSERVE_ENABLE_AUTO_TOOL_CHOICE": "true",
    }
    cluster = start_up(out)
    try:
        with vllm_serve(default_model_dir(), cluster.model, out, (*FLAGS, "--reasoning-parser", "qwen3")) as server:
            cfg = ParityConfig(
                a=cluster.url, b=server.url, model_a=cluster.model, model_b=server.model, concurrency=8, suite="tools"
            )
            report = asyncio.run(run(cfg, known_file.load(REPO / "docs/parity_known.json")))
    finally:
        stop_up(cluster.proc)
    (out / "parity.json").write_text(json.dumps(report_json(report), indent=1, default=str))
    print(render(report))


if __name__ == "__main__":
    main()

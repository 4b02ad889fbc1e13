"""A router's stop ends and says where it waited: each lifespan close step is cut off after
its bound (logged), and a stop still running after ``stop_stacks_s`` writes every thread's
stack to stderr, so a router an orchestrator must SIGKILL has left the reason in its log."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest

from router.server import close_bounded
from tests.helpers.net import REPO


def test_a_close_step_that_hangs_is_cut_off_and_named(caplog: pytest.LogCaptureFixture) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="router"):
        asyncio.run(close_bounded("fleet", hangs(), timeout_s=0.2))
    assert time.monotonic() - started < 5
    assert "closing the fleet took over 0 s; cut off" in caplog.text


def test_a_close_step_that_ends_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    done: list[bool] = []

    async def ends() -> None:
        done.append(True)

    with caplog.at_level(logging.ERROR, logger="router"):
        asyncio.run(close_bounded("state store", ends(), timeout_s=5))
    assert done == [True] and not caplog.records


SLOW_STOP = """
import time
from router.torchless import keep_torch_out
keep_torch_out()  # as the router's entry points do (seconds of imports otherwise)
import uvicorn
from router.server import Server
server = Server(uvicorn.Config(app=None))
server.stop_stacks_s = 0.3
server.handle_exit(15, None)  # SIGTERM
assert server.should_exit
def waiting_in_a_slow_close():
    time.sleep(1.5)
waiting_in_a_slow_close()
"""


def test_a_slow_stop_writes_the_stacks_once_its_time_is_up() -> None:
    out = subprocess.run([sys.executable, "-c", SLOW_STOP], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "waiting_in_a_slow_close" in out.stderr and "most recent call first" in out.stderr


def test_a_prompt_stop_writes_nothing() -> None:
    fast = SLOW_STOP.replace("stop_stacks_s = 0.3", "stop_stacks_s = 30").replace("time.sleep(1.5)", "pass")
    out = subprocess.run([sys.executable, "-c", fast], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "most recent call first" not in out.stderr, out.stderr

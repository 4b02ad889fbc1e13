"""Processes the tests start: CPU use, and killing what a test leaves behind."""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable, Iterable, Iterator

import psutil

from pdserve.lifetime import kill_descendants

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (vLLM's engine core is a child of the worker)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # a process that ended spent nothing more
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def cpu_percent(procs: Iterable[psutil.Process], seconds: float) -> float:
    """CPU use of ``procs`` over the next ``seconds``, in % of one core."""
    procs = list(procs)
    start = cpu_seconds(procs)
    time.sleep(seconds)
    return 100 * (cpu_seconds(procs) - start) / seconds


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants: an engine process outliving its test spins."""
    kill_descendants(pid)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).kill()


@contextlib.contextmanager
def reaping_new_children() -> Iterator[Callable[[], list[psutil.Process]]]:
    """Yields a function listing the children this process started inside the block, and
    kills them (with their descendants) on exit: for in-process engines whose own shutdown
    (or a failed start) can leave an engine core behind."""
    me = psutil.Process()
    before = {p.pid for p in me.children()}

    def started() -> list[psutil.Process]:
        return [p for p in me.children() if p.pid not in before]

    try:
        yield started
    finally:
        for child in started():
            kill_tree(child.pid)


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux PR_SET_CHILD_SUBREAPER), so
    ``reap_leftovers`` can find them; False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_leftovers(grace_s: float = 5) -> list[str]:
    """SIGKILL every descendant of this process still alive after ``grace_s`` (time for
    those already shutting down to finish); the command lines of those killed."""
    live: list[psutil.Process] = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    _, alive = psutil.wait_procs(live, timeout=grace_s)
    left: list[str] = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(proc.cmdline())[:160])
            proc.kill()
    return left

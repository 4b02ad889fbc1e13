"""Waiting on a readiness signal (a log line, a health RPC, a metric) instead of a fixed sleep.

The timeout is a backstop for a signal that never comes, sized for a busy 2-core machine;
the wait ends as soon as the signal is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class NotReadyError(AssertionError):
    """The signal did not come in time; the message says what was awaited and the last value."""


def wait_until(
    probe: Callable[[], T | None],
    what: str,
    timeout_s: float = 120,
    interval_s: float = 0.2,
    alive: Callable[[], None] = lambda: None,
) -> T:
    """Poll ``probe`` until it returns a truthy value and return that value. ``alive`` raises
    when the process being waited on has died, so a crash fails at once, not at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotReadyError(f"{what}: not after {timeout_s:.0f}s (last: {value!r})")
        time.sleep(interval_s)


async def async_wait_until(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = 120, interval_s: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotReadyError(f"{what}: not after {timeout_s:.0f}s (last: {value!r})")
        await asyncio.sleep(interval_s)

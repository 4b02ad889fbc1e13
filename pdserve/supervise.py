"""Long-lived background loops that come back: a loop that raises (or returns) is logged,
counted and started again after a backoff, doubling up to ``max_backoff_s`` and reset
once it has run ``healthy_s`` without failing. Cancellation stops it for good.

Callers: the router's fleet (discovery, Load polls, and with an in-process store one
KV event feed per worker) and a worker's registration (heartbeat, KV event feed).
``down()`` names the loops waiting to restart, for health endpoints. One event loop;
every task is held here (none is left unreferenced).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        on_restart: Callable[[str], None] | None = None,
        *,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        healthy_s: float = 30.0,
    ) -> None:
        self._on_restart = on_restart
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._healthy_s = healthy_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, str] = {}  # loop → the error it is restarting from
        self._stopped: list[asyncio.Task[None]] = []  # cancelled by ``stop``, not yet awaited

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop()`` until ``close``, starting it again whenever it ends."""
        if name in self._tasks:
            raise ValueError(f"a loop named {name} already runs")
        self._tasks[name] = asyncio.create_task(self._keep(name, loop), name=name)

    def stop(self, name: str) -> None:
        """Cancel one loop (awaited by ``close``); unknown names are ignored."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            self._stopped.append(task)
        self._down.pop(name, None)

    def down(self) -> dict[str, str]:
        """The loops not running now (failed, waiting to restart) and why."""
        return dict(self._down)

    async def _keep(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        clock = asyncio.get_running_loop().time
        backoff = self._min_backoff_s
        while True:
            started = clock()
            try:
                await loop()
                why = "returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a loop's bug must not end the process's duty
                why = f"{type(exc).__name__}: {exc}"
            if clock() - started >= self._healthy_s:
                backoff = self._min_backoff_s
            log.error("background loop %s ended (%s); restarting in %.1fs", name, why, backoff)
            self._down[name] = why[:300]
            if self._on_restart is not None:
                self._on_restart(name)
            await asyncio.sleep(backoff)
            backoff = min(self._max_backoff_s, backoff * 2)
            self._down.pop(name, None)
            log.info("background loop %s restarted", name)

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._stopped]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._stopped.clear()

"""Background loops come back: pdserve.supervise on its own, and the router's fleet loops
behind /health (a loop restarting is reported in the body, then clears)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from pdserve.state.memory import MemoryStore
from pdserve.supervise import Supervisor
from router.fleet import Fleet, FleetOptions, TokenizerSource
from router.metrics import RouterMetrics
from router.service import Background
from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router, tiny_tokenizer


async def wait_for(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_loop_that_fails_or_returns_is_restarted_counted_and_reported_until_cancelled() -> None:
    restarts: list[str] = []
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("injected")
        if runs == 2:
            return  # a loop that ends is restarted too
        await asyncio.sleep(3600)

    loops = Supervisor(restarts.append, min_backoff_s=0.05)
    loops.spawn("flaky", flaky)
    await wait_for(lambda: "flaky" in loops.down())
    assert loops.down() == {"flaky": "RuntimeError: injected"}
    await wait_for(lambda: runs == 3 and not loops.down())
    assert restarts == ["flaky", "flaky"]
    await loops.close()
    assert runs == 3  # cancelled for good


async def test_a_dead_fleet_loop_is_restarted_and_health_reports_it_meanwhile(tmp_path: Path) -> None:
    metrics = RouterMetrics("round-robin")
    fleet = Fleet(MemoryStore(), TokenizerSource({}, ""), FleetOptions(refresh_s=0.02, poll_s=0.02), metrics)
    healed = asyncio.Event()

    async def poll() -> None:
        if not healed.is_set():
            raise RuntimeError("injected poll failure")

    fleet.poll = poll  # type: ignore[method-assign]
    router = scripted_router(
        tiny_tokenizer(tmp_path),
        [ScriptedPrefill()],
        [ScriptedDecode([5, 6])],
        metrics=metrics,
        background=lambda: Background(fleet.loops_down()),
    )
    app = router.client.app
    fleet.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
            await wait_for(lambda: "load_poll" in fleet.loops_down())
            for path in ("/health", "/ready"):
                resp = await client.get(path)
                assert resp.status_code == 200  # still serving: degraded, not down
                assert resp.json() == {
                    "status": "degraded",
                    "loops_down": {"load_poll": "RuntimeError: injected poll failure"},
                }
            healed.set()
            await wait_for(lambda: not fleet.loops_down())
            assert (await client.get("/health")).json() == {"status": "ok"}
        assert router.counter("pdserve_router_loop_restarts_total", loop="load_poll") >= 1
        assert router.counter("pdserve_router_loop_restarts_total", loop="discovery") == 0
    finally:
        await fleet.close()


def test_health_names_a_store_outage_and_an_empty_fleet(tmp_path: Path) -> None:
    down = Background(store_up=False)
    router = scripted_router(tiny_tokenizer(tmp_path), [], [ScriptedDecode([5])], background=lambda: down)
    resp = router.client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "degraded", "state_store": "unreachable: serving from this router's local view"}
    empty = scripted_router(tiny_tokenizer(tmp_path), [ScriptedPrefill()], [], background=lambda: down)
    resp = empty.client.get("/ready")
    assert resp.status_code == 503 and resp.json()["status"] == "unavailable"
    assert resp.json()["state_store"].startswith("unreachable")
    refused = Background(store_up=False, store_down_kind="tls")  # e.g. Redis's certificate not trusted
    resp = scripted_router(tiny_tokenizer(tmp_path), [], [ScriptedDecode([5])], background=lambda: refused).client
    assert resp.get("/health").json()["state_store"] == "unreachable (tls): serving from this router's local view"


async def test_a_stopped_loop_is_not_restarted() -> None:
    restarts: list[str] = []
    runs = 0

    async def forever() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(3600)

    loops = Supervisor(restarts.append, min_backoff_s=0.01)
    loops.spawn("feed", forever)
    await wait_for(lambda: runs == 1)
    loops.stop("feed")
    loops.stop("unknown")
    await asyncio.sleep(0.05)
    assert (runs, restarts, loops.down()) == (1, [], {})
    loops.spawn("feed", forever)  # the name is free again
    await wait_for(lambda: runs == 2)
    await loops.close()

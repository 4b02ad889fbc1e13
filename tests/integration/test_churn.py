"""Workers joining and leaving many times: every map the router keeps per worker (pools'
counters and ejection records, the fleet's clients and retired channels, per-worker
metric series, the tokenizer cache, the admission gate's per-client state) stays
bounded by the workers there are now. In-process sim workers on real gRPC (127.0.0.1:0),
registered in an in-memory registry, behind the router's own fleet, orchestrator and
metrics."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from decode_worker.servicer import DecodeServicer, register
from pdserve.engine.base import SamplingSpec
from pdserve.engine.config import EngineConfig
from pdserve.engine.sim.engine import SimDecodeEngine
from pdserve.kv.hashing import SCHEME
from pdserve.state import WorkerRecord
from pdserve.state.memory import MemoryStore
from pdserve.types import WorkerId
from pdserve.worker.server import RpcGate
from router.fleet import Fleet, FleetOptions, TokenizerSource
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.placement import make_policy
from router.placement.decider import ThresholdDecider
from router.placer import Placer
from router.request import Generation, Timeouts
from router.service import RouterService
from tests.factories import make_tiny_tokenizer

CYCLES = 40
MODEL = "sim"
BS = 16


@dataclass
class SimWorker:
    address: WorkerId
    server: grpc.aio.Server
    engine: SimDecodeEngine

    async def stop(self) -> None:
        await self.server.stop(0)
        await self.engine.shutdown()


async def sim_decode_worker() -> SimWorker:
    config = EngineConfig(
        model="", served_model_name=MODEL, engine="sim", block_size=BS, engine_args={"profile": "zero"}
    )
    engine = SimDecodeEngine(config)
    await engine.start()
    server = grpc.aio.server()
    register(DecodeServicer(engine, RpcGate()))(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return SimWorker(WorkerId(f"127.0.0.1:{port}"), server, engine)


def record(worker: SimWorker) -> WorkerRecord:
    return WorkerRecord(worker.address, "decode", MODEL, BS, SCHEME, 1 << 20, uuid.uuid4().hex)


@contextlib.asynccontextmanager
async def router(tmp: Path) -> AsyncIterator[tuple[Fleet, RouterService, RouterMetrics, TokenizerSource]]:
    store, metrics = MemoryStore(), RouterMetrics("round-robin")
    tokenizers = TokenizerSource({}, str(make_tiny_tokenizer(tmp)))
    fleet = Fleet(store, tokenizers, FleetOptions(follow_events=False, missing_grace_s=0), metrics)
    placer = Placer(make_policy("round-robin"), ThresholdDecider(), store)
    service = RouterService(fleet.pools, Orchestrator(placer, Timeouts(), metrics), metrics)
    try:
        yield fleet, service, metrics, tokenizers
    finally:
        await fleet.close()
        service.close()


async def generate(service: RouterService) -> None:
    gen = Generation(prompt_ids=list(range(300, 340)), spec=SamplingSpec(max_tokens=3, temperature=0))
    answer = await service.serve(MODEL, lambda _: [gen], client=f"client-{uuid.uuid4().hex[:6]}")
    async for _ in answer.rest:
        pass


async def test_workers_joining_and_leaving_40_times_leave_no_growing_map(tmp_path: Path) -> None:
    async with router(tmp_path) as (fleet, service, metrics, tokenizers):
        store = fleet._store
        stable = await sim_decode_worker()
        await store.register(record(stable), ttl_s=600)
        await fleet.refresh()
        sizes = []
        for cycle in range(CYCLES):
            worker = await sim_decode_worker()
            await store.register(record(worker), ttl_s=600)
            await fleet.refresh()
            for _ in range(4):  # round-robin: both workers serve
                await generate(service)
            if cycle % 2:  # half leave by dying first: a failed Load poll ejects them, then they go
                await worker.stop()
                await fleet.poll()
                await store.deregister(worker.address)
            else:
                await store.deregister(worker.address)
                await worker.stop()
            await fleet.refresh()
            await fleet.poll()  # closes the retired channels nothing uses
            pool = fleet.pools[MODEL]
            sizes.append((sum(pool.tracked().values()), len(fleet._clients), len(fleet._retired), metrics.series()))
        pool = fleet.pools[MODEL]
        assert set(pool.decode) == {stable.address}
        assert max(pool.tracked().values()) <= 1, pool.tracked()
        assert (len(fleet._clients), len(fleet._retired), len(fleet._probes)) == (1, 0, 0)
        assert metrics.series() <= 1 + 2, metrics.series()  # the stable worker's placements; one model
        assert service.admission.gate.tracked() == 0 and len(tokenizers) == 1
        print(f"\n(pool map entries, clients, retired channels, metric series) per cycle: {sizes[:3]} ... {sizes[-1]}")
        assert sizes[-1] == sizes[1], sizes  # the same after 40 cycles as after 2
        await stable.stop()

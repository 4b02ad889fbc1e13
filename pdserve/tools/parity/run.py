"""Run the battery: each case to both servers at once, ``concurrency`` cases in flight.

Cases in flight share a server's batches. On the default model (fp32, CPU) that changed
no greedy token and no logprob against one-at-a-time runs (docs/parity.md); elsewhere,
``concurrency=1`` takes batching out of the comparison."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from pdserve.tools.parity.cases import Case
from pdserve.tools.parity.client import Reply, Server, send
from pdserve.tools.parity.compare import LOGPROB_ABS_TOL, Mismatch, compare


@dataclass(frozen=True)
class CaseResult:
    case: Case
    a: Reply
    b: Reply
    mismatches: list[Mismatch]


async def run_battery(
    servers: tuple[Server, Server], cases: list[Case], concurrency: int = 1, tol: float = LOGPROB_ABS_TOL
) -> list[CaseResult]:
    gate = asyncio.Semaphore(concurrency)
    # A new connection per request: the battery compares answers, not connection reuse. With a
    # pool, one request in about 400 was lost with a ReadError under a CPU hog twice (at 5 s
    # and at 2 s idle expiry; no server closed a connection after an answer, measured), a
    # client-pool race the servers never see. Keep-alive has its own test
    # (tests/integration/test_keep_alive.py).
    limits = httpx.Limits(max_connections=2 * concurrency + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(case: Case) -> CaseResult:
            async with gate:
                a, b = await asyncio.gather(send(client, servers[0], case), send(client, servers[1], case))
            return CaseResult(case, a, b, compare(case, a, b, servers, tol))

        return list(await asyncio.gather(*(one(c) for c in cases)))

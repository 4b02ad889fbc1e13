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
    # Idle connections expire well before a server's keep-alive (uvicorn's default, which
    # vllm serve keeps: 5 s, httpx's own expiry): reusing one as the server closes it loses
    # the request with a ReadError (tests/integration/test_keep_alive.py).
    limits = httpx.Limits(max_connections=2 * concurrency + 2, keepalive_expiry=2.0)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(case: Case) -> CaseResult:
            async with gate:
                a, b = await asyncio.gather(send(client, servers[0], case), send(client, servers[1], case))
            return CaseResult(case, a, b, compare(case, a, b, servers, tol))

        return list(await asyncio.gather(*(one(c) for c in cases)))

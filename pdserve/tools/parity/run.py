"""Run the battery: each case to both servers at once, cases one after another.

One case at a time by default: a server's greedy output must not depend on which other
requests shared its batch (batch shape changes float sums; near-tied picks can flip).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from pdserve.tools.parity.cases import Case
from pdserve.tools.parity.client import Reply, Server, send
from pdserve.tools.parity.compare import Mismatch, compare


@dataclass(frozen=True)
class CaseResult:
    case: Case
    a: Reply
    b: Reply
    mismatches: list[Mismatch]


async def run_battery(servers: tuple[Server, Server], cases: list[Case], concurrency: int = 1) -> list[CaseResult]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=2 * concurrency + 2)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(case: Case) -> CaseResult:
            async with gate:
                a, b = await asyncio.gather(send(client, servers[0], case), send(client, servers[1], case))
            return CaseResult(case, a, b, compare(case, a, b, servers))

        return list(await asyncio.gather(*(one(c) for c in cases)))

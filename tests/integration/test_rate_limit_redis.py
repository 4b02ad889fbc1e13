"""Per-client rate limits shared by router replicas through a real Redis."""

from __future__ import annotations

import pytest

from pdserve.state import make_store
from router.admission import RateLimiter, client_id
from router.errors import RateLimited
from tests.redis_server import RedisServer


async def test_router_replicas_share_a_clients_budget_through_redis(redis_server: RedisServer) -> None:
    redis_server.flush(db=2)
    stores = [make_store(redis_server.db_url(2)) for _ in range(2)]  # two routers, one Redis
    try:
        limiters = [RateLimiter(s, requests_per_minute=3, tokens_per_minute=0) for s in stores]
        for limiter in (limiters[0], limiters[1], limiters[0]):
            await limiter.charge(client_id("k"), 1)
        with pytest.raises(RateLimited):
            await limiters[1].charge(client_id("k"), 1)  # the fourth, on either router
    finally:
        for s in stores:
            await s.close()

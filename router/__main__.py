"""``python -m router`` / ``pdserve router``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from pdserve.config import setup_logging
from pdserve.types import WorkerId
from router import config
from router.api.app import create_app
from router.clients import DecodeClient, PrefillClient
from router.metrics import RouterMetrics
from router.orchestrator import Orchestrator
from router.placement import make_picker
from router.pool import ModelPool, check_agree, wait_for_info
from router.service import RouterService
from router.tokenizer import load_tokenizer

log = logging.getLogger("router")


async def build_service(cfg: config.RouterConfig) -> RouterService:
    """Connect to the configured workers, learn their model and limits, build the pool."""
    prefill = {WorkerId(a): PrefillClient(a) for a in cfg.prefill}
    decode = {WorkerId(a): DecodeClient(a) for a in cfg.decode}
    clients: list[PrefillClient | DecodeClient] = [*prefill.values(), *decode.values()]
    infos = await asyncio.gather(*(wait_for_info(c, cfg.startup_timeout_s) for c in clients))
    info = check_agree(list(infos))
    pool = ModelPool(
        name=info.model,
        tokenizer=load_tokenizer(cfg.model_dir),
        max_model_len=min(i.max_model_len for i in infos),
        block_size=info.block_size,
        prefill=prefill,
        decode=decode,
    )
    log.info("model %s: %d prefill, %d decode worker(s)", pool.name, len(prefill), len(decode))
    metrics = RouterMetrics(cfg.policy)
    orchestrator = Orchestrator(make_picker(cfg.policy), make_picker(cfg.policy), cfg.timeouts, metrics)
    return RouterService({pool.name: pool}, orchestrator, metrics)


def make_app(cfg: config.RouterConfig) -> FastAPI:
    holder: dict[str, RouterService] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder["service"] = await build_service(cfg)
        log.info("router ready on http://%s:%d/v1", cfg.host, cfg.port)
        try:
            yield
        finally:
            for pool in holder["service"].pools.values():
                await pool.close()

    return create_app(lambda: holder["service"], lifespan)


def main(argv: list[str] | None = None) -> int:
    cfg = config.from_args(argv)
    setup_logging(cfg.log_level)
    uvicorn.run(
        make_app(cfg),
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level.lower(),
        loop="auto",
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

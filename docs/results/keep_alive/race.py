"""Does an httpx client (keepalive_expiry=5, its default) reusing a connection to uvicorn
(timeout_keep_alive=5, its default) near the 5 s mark get a connection error?"""

import asyncio
import sys

import httpx
import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.post("/x")
async def x() -> dict:
    return {"ok": True}


async def main(server_ka: int, client_ka: float, tries: int) -> None:
    cfg = uvicorn.Config(app, host="127.0.0.1", port=18777, log_level="error", timeout_keep_alive=server_ka)
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    errors = 0
    async with httpx.AsyncClient(limits=httpx.Limits(keepalive_expiry=client_ka)) as c:
        for i in range(tries):
            await c.post("http://127.0.0.1:18777/x")
            await asyncio.sleep(min(server_ka, client_ka) - 0.004 + (i % 9) * 0.001)
            try:
                await c.post("http://127.0.0.1:18777/x")
            except httpx.HTTPError as exc:
                errors += 1
                print(type(exc).__name__, exc, flush=True)
    print(f"server keep-alive {server_ka}s, client expiry {client_ka}s: {errors}/{tries} failed", flush=True)
    server.should_exit = True
    await task


asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))

"""A KV event publisher with vLLM's wire behaviour (PUB + ROUTER replay), for the sim engine.

Same frames, sequence numbers and replay protocol as vLLM's ``ZmqEventPublisher``
(see events.py), so anything that follows a vLLM engine (our IndexFeed,
vllm-router's ``--kv-event-source``) follows a simulated worker unchanged.
Runs on the owner's event loop; ``publish`` never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence

import zmq
import zmq.asyncio

from pdserve.kv.events import END_SEQ, KvEvent, encode_payload


class EventPublisher:
    def __init__(self, endpoint: str, replay_endpoint: str, topic: str = "", buffer_steps: int = 10_000) -> None:
        self._ctx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.linger = 0
        self._pub.bind(endpoint)
        self._replay = self._ctx.socket(zmq.ROUTER)
        self._replay.linger = 0
        self._replay.bind(replay_endpoint)
        self._topic = topic.encode()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._replay_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._replay_task = asyncio.create_task(self._serve_replay())

    def publish(self, events: Sequence[KvEvent]) -> None:
        if not events:
            return
        payload = encode_payload(events)
        seq, self._seq = self._seq, self._seq + 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq.Again):  # like vLLM: a slow subscriber loses batches, then replays
            self._pub.send_multipart([self._topic, seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await self._replay.send_multipart([client, b"", self._topic, seq.to_bytes(8, "big"), payload])
            await self._replay.send_multipart([client, b"", b"", END_SEQ, b""])

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        self._ctx.destroy(linger=0)

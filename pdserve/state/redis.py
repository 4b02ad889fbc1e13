"""Redis StateStore: shared by router replicas, written by the workers.

Keys, under a namespace (``--state-namespace``, default ``pdserve``) so that two
clusters sharing one Redis database never see each other:
  {ns}:w:{worker}            worker record (JSON), expires with its heartbeat TTL
  {ns}:workers               set of registered worker ids: re-added by every heartbeat,
                             pruned of expired ids on read, expires with the last worker
  {ns}:o:{model}:{worker}    set of the worker's blocks (hex); expires with the worker's
                             registration: every heartbeat refreshes it (one PEXPIRE, however
                             many blocks); a writer that never registered: ``UNREGISTERED_TTL_S``
                             after its last write
  {ns}:m:{model}             set of workers with a block set for the model (pruned on read)
  {ns}:p:{model}:{hash}      hash worker → expiry (ms) of predicted entries; the key expires too
  {ns}:c:{key}               a counter (``count``), expires one window after its first add
Nothing a dead worker leaves outlives its TTL. Registry updates are atomic (Lua
scripts or MULTI). The scripts name keys they build from a record, so this layout needs
one Redis (standalone, or Sentinel for failover), not Redis Cluster. Every command has
the client's socket timeout; every Redis error — unreachable, timed out, a TLS handshake
refused, OOM under ``maxmemory``, READONLY, MISCONF, NOPERM, any other error reply — becomes
``StoreUnavailable`` with its kind.

TLS (``rediss://``) is redis-py's own: the server's certificate is verified against
``TlsFiles.ca`` (else the system's CAs) and its host name checked; ``cert``/``key`` are
the client certificate a server with ``tls-auth-clients yes`` asks for.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from pdserve.security import TlsFiles, redact_url
from pdserve.state.base import StoreUnavailable, WorkerRecord, valid_records
from pdserve.types import BlockHash, WorkerId, to_hex

UNREGISTERED_TTL_S = 600.0
PRUNE_EVERY_S = 1.0  # how often one client's match drops expired workers from a model's worker set

# KEYS: record, workers set. ARGV: worker id, ttl ms, namespace. 0 if the record expired.
_HEARTBEAT = """
local rec = redis.call('GET', KEYS[1])
if not rec then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
local ok, data = pcall(cjson.decode, rec)
if ok and type(data) == 'table' and type(data.model) == 'string' then
  local blocks = ARGV[3] .. ':o:' .. data.model .. ':' .. ARGV[1]
  local models = ARGV[3] .. ':m:' .. data.model
  if redis.call('PTTL', blocks) >= 0 and redis.call('PTTL', blocks) < ttl then redis.call('PEXPIRE', blocks, ttl) end
  if redis.call('PTTL', models) >= 0 and redis.call('PTTL', models) < ttl then redis.call('PEXPIRE', models, ttl) end
end
return 1
"""

# KEYS: workers set. ARGV: record key prefix. The live records; ids whose record expired are
# removed in the same atomic step, so a heartbeat's re-add can never be undone by a stale read.
_ENTRIES = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local rec = redis.call('GET', ARGV[1] .. id)
  if rec then out[#out + 1] = rec else redis.call('SREM', KEYS[1], id) end
end
return out
"""

# KEYS: record, workers set. ARGV: worker id, namespace. Removes the record and its blocks.
_DEREGISTER = """
local rec = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if rec then
  local ok, data = pcall(cjson.decode, rec)
  if ok and type(data) == 'table' and type(data.model) == 'string' then
    redis.call('DEL', ARGV[2] .. ':o:' .. data.model .. ':' .. ARGV[1])
    redis.call('SREM', ARGV[2] .. ':m:' .. data.model, ARGV[1])
  end
end
return 1
"""

# KEYS: the model's worker set. ARGV: block set key prefix ({ns}:o:{model}:), prediction key
# prefix ({ns}:p:{model}:), now (ms), 1 to prune, then the prompt's block hashes (hex) in order.
# Returns {worker, leading blocks held, ...} (stored, or predicted and unexpired), in one round
# trip. Every worker is asked for the first block; only those holding it are asked for the rest,
# in one SMISMEMBER per worker and chunk (a call from Lua costs more than the lookups in it). A
# block's predictions are read only where they can change the answer (the first block, or a
# stored block missing). Pruning drops workers whose block set expired from the worker set: an
# EXISTS per worker missing the first block, so the caller asks for it now and then, not on
# every lookup (a worker left in the set meanwhile matches nothing).
_MATCH = """
local o, p, now, prune, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1', #ARGV - 4
local CHUNK = 1024  -- hashes per SMISMEMBER: unpack() is bounded by Lua's stack
local preds = {}
local function predicted(i)
  if preds[i] then return preds[i] end
  local out, kv = {}, redis.call('HGETALL', p .. ARGV[i + 4])
  for j = 1, #kv, 2 do
    local expires = tonumber(kv[j + 1])
    if expires and expires > now then out[kv[j]] = true end
  end
  preds[i] = out
  return out
end
local function leading(w)
  for first = 2, n, CHUNK do
    local last = math.min(n, first + CHUNK - 1)
    local flags = redis.call('SMISMEMBER', o .. w, unpack(ARGV, first + 4, last + 4))
    for i = first, last do
      if flags[i - first + 1] == 0 and not predicted(i)[w] then return i - 1 end
    end
  end
  return n
end
local alive = {}
for w in pairs(predicted(1)) do alive[w] = true end
for _, w in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not alive[w] then
    if redis.call('SISMEMBER', o .. w, ARGV[5]) == 1 then
      alive[w] = true
    elseif prune and redis.call('EXISTS', o .. w) == 0 then
      redis.call('SREM', KEYS[1], w)
    end
  end
end
local out = {}
for w in pairs(alive) do out[#out + 1] = w; out[#out + 1] = leading(w) end
return out
"""

_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (OutOfMemoryError, "oom"),  # maxmemory reached under noeviction
    (ReadOnlyError, "readonly"),  # a replica (e.g. after a failover)
    (NoPermissionError, "noperm"),  # an ACL user lacking the command or key
    (AuthenticationError, "auth"),
)


def error_kind(exc: BaseException) -> str:
    """The metrics label of a Redis error."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, ResponseError):
        return "misconf" if "MISCONF" in str(exc) else "response"
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError):  # redis-py wraps the handshake's error
        return "tls"
    return "connection"


@asynccontextmanager
async def _reachable(url: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"redis at {url}: {type(exc).__name__}: {exc}", error_kind(exc)) from None


def _tls_args(tls: TlsFiles) -> dict[str, str]:
    """redis-py's SSL arguments for ``tls`` (a ``rediss://`` URL: ``state_tls`` checked it);
    verification stays redis-py's default: required, host name checked."""
    names = {"ssl_ca_certs": tls.ca, "ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
    return {name: path for name, path in names.items() if path}


class RedisStore:
    def __init__(
        self,
        url: str,
        timeout_s: float = 0.5,
        namespace: str = "pdserve",
        password: str = "",
        tls: TlsFiles | None = None,
    ) -> None:
        self.url = redact_url(url)
        # RESP2: under RESP3, redis-py 8.1's asyncio pool skips its check for connections the
        # server closed (redis/redis-py#4252), so after a Redis restart every pooled connection
        # failed one call. We use no RESP3 feature.
        extra: dict[str, str] = _tls_args(tls or TlsFiles())
        if password:
            extra["password"] = password
        self._r = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True, protocol=2, **extra
        )
        self._p = namespace
        self._ttl_ms: dict[WorkerId, int] = {}  # registration TTL of the workers writing through this client
        self._prune_at: dict[str, float] = {}  # model → when its next match prunes the worker set
        self._heartbeat = self._r.register_script(_HEARTBEAT)
        self._entries = self._r.register_script(_ENTRIES)
        self._deregister = self._r.register_script(_DEREGISTER)
        self._match = self._r.register_script(_MATCH)

    def _w(self, worker_id: str) -> str:
        return f"{self._p}:w:{worker_id}"

    @property
    def _workers(self) -> str:
        return f"{self._p}:workers"

    def _pred(self, model: str, h: BlockHash | None) -> str:
        """A block's predictions; ``None``: the model's key prefix."""
        return f"{self._p}:p:{model}:{'' if h is None else to_hex(h)}"

    def _o(self, model: str, worker_id: str = "") -> str:
        return f"{self._p}:o:{model}:{worker_id}"

    def _m(self, model: str) -> str:
        return f"{self._p}:m:{model}"

    async def register(self, record: WorkerRecord, ttl_s: float) -> None:
        ttl_ms = int(ttl_s * 1000)
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self._w(record.worker_id), record.to_json(), px=ttl_ms)
            pipe.sadd(self._workers, record.worker_id)
            pipe.pexpire(self._workers, ttl_ms, gt=True)
            pipe.pexpire(self._workers, ttl_ms, nx=True)
            pipe.pexpire(self._o(record.model, record.worker_id), ttl_ms)
            await pipe.execute()
        self._ttl_ms[record.worker_id] = ttl_ms

    async def heartbeat(self, worker_id: WorkerId, ttl_s: float) -> bool:
        self._ttl_ms[worker_id] = int(ttl_s * 1000)
        async with _reachable(self.url):
            keys = [self._w(worker_id), self._workers]
            return bool(await self._heartbeat(keys=keys, args=[worker_id, int(ttl_s * 1000), self._p]))

    async def deregister(self, worker_id: WorkerId) -> None:
        self._ttl_ms.pop(worker_id, None)
        async with _reachable(self.url):
            await self._deregister(keys=[self._w(worker_id), self._workers], args=[worker_id, self._p])

    async def entries(self) -> list[str]:
        async with _reachable(self.url):
            return [str(e) for e in await self._entries(keys=[self._workers], args=[self._w("")])]

    async def workers(self) -> list[WorkerRecord]:
        return valid_records(await self.entries())

    def _touch(self, pipe: aioredis.client.Pipeline, model: str, worker_id: WorkerId) -> None:
        ttl_ms = self._ttl_ms.get(worker_id, int(UNREGISTERED_TTL_S * 1000))
        pipe.pexpire(self._o(model, worker_id), ttl_ms)
        pipe.sadd(self._m(model), worker_id)
        pipe.pexpire(self._m(model), ttl_ms, gt=True)
        pipe.pexpire(self._m(model), ttl_ms, nx=True)

    async def add_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        if not hashes:
            return
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=True)
            pipe.sadd(self._o(model, worker_id), *(to_hex(h) for h in hashes))
            self._touch(pipe, model, worker_id)
            await pipe.execute()

    async def remove_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        if not hashes:
            return
        async with _reachable(self.url):
            await self._r.srem(self._o(model, worker_id), *(to_hex(h) for h in hashes))

    async def replace_blocks(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash]) -> None:
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(self._o(model, worker_id))
            if hashes:
                pipe.sadd(self._o(model, worker_id), *(to_hex(h) for h in hashes))
                self._touch(pipe, model, worker_id)
            else:
                pipe.srem(self._m(model), worker_id)
            await pipe.execute()

    async def predict(self, model: str, worker_id: WorkerId, hashes: Sequence[BlockHash], ttl_s: float) -> None:
        ttl_ms = int(ttl_s * 1000)
        expires = int(time.time() * 1000) + ttl_ms
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=False)
            for h in hashes:
                pipe.hset(self._pred(model, h), worker_id, expires)
                pipe.pexpire(self._pred(model, h), ttl_ms)
            await pipe.execute()

    async def match(self, model: str, hashes: Sequence[BlockHash]) -> dict[WorkerId, int]:
        if not hashes:
            return {}
        now = time.time()
        prune = now >= self._prune_at.get(model, 0.0)
        if prune:
            self._prune_at[model] = now + PRUNE_EVERY_S
        args = [self._o(model), self._pred(model, None), str(int(now * 1000)), "1" if prune else "0"]
        args += [to_hex(h) for h in hashes]
        async with _reachable(self.url):
            reply = await self._match(keys=[self._m(model)], args=args)
        return {WorkerId(str(w)): int(n) for w, n in zip(reply[0::2], reply[1::2], strict=True)}

    async def count(self, key: str, amount: int, window_s: float) -> int:
        async with _reachable(self.url):
            pipe = self._r.pipeline(transaction=True)
            pipe.incrby(f"{self._p}:c:{key}", amount)
            pipe.pexpire(f"{self._p}:c:{key}", max(1, int(window_s * 1000)), nx=True)
            value, _ = await pipe.execute()
        return int(value)

    async def ping(self) -> None:
        async with _reachable(self.url):
            await self._r.ping()

    async def close(self) -> None:
        await self._r.aclose()

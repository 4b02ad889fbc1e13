"""A real redis-server on a loopback port, started and stopped by the tests and the bench
(``pdserve bench index``): no persistence, its log in its working directory; optionally
serving TLS only (``rediss://``, the plaintext port off), as compose and Kubernetes run it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from pdserve.security import TlsFiles

# A backstop: the wait ends at the first answered PING; a server that exits fails it at once.
START_TIMEOUT_S = 120.0


class RedisServer:
    def __init__(self, port: int, workdir: Path, password: str = "", tls: TlsFiles | None = None) -> None:
        self.port = port
        self.password = password  # "": none (requirepass off)
        self.tls = tls  # serve TLS only, with this certificate; clients need none, only the CA
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                *(binary, "--port", "0" if self.tls else str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *(("--requirepass", self.password) if self.password else ()),
                *self._tls_args(),
            ],
            cwd=self._workdir,
            stdout=(self._workdir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return self
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self._proc.kill()  # a server we gave up on must not stay behind
                    self._proc.wait()
                    raise RuntimeError(f"redis-server did not start; see {self._workdir}/redis.log") from None
                time.sleep(0.05)

    def _tls_args(self) -> tuple[str, ...]:
        if self.tls is None:
            return ()
        return (
            *("--tls-port", str(self.port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca),
        )

    def client(self, db: int = 0) -> redis.Redis:
        """A synchronous client with this server's password and CA."""
        ca = self.tls.ca if self.tls else None
        return redis.Redis(
            port=self.port, db=db, socket_timeout=5, password=self.password or None, ssl=bool(self.tls), ssl_ca_certs=ca
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def db_url(self, db: int) -> str:
        return self.url.rpartition("/")[0] + f"/{db}"

    def flush(self, db: int) -> None:
        """Empty one database (the session cluster's workers live in db 0)."""
        self.client(db).flushdb()

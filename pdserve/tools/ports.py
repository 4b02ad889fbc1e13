"""Ports: free loopback ports for launched processes, and the one port layout of ``pdserve up``.

``UpPorts`` is the only place that says which port each process of ``pdserve up``
binds; ``pdserve up`` starts its children from it and checks it before they start,
and the bench and the tests that launch ``pdserve up`` pick free ports with
``UpPorts.free`` and pass them on with ``up_args``.
"""

from __future__ import annotations

import random
import socket
from collections import deque
from dataclasses import dataclass

from pdserve.flags import flag

_GIVEN: deque[int] = deque(maxlen=4000)  # ports this process handed out, most recent last


def free_port(span: int = 1) -> int:
    """A free loopback port and the ``span - 1`` after it, below Linux's ephemeral range
    (32768+), where vLLM's own ZMQ sockets take their random ports.

    Never one this process handed out lately: processes started one after another
    bind their ports only once they are up, so a port free now may be the one given
    to the process started a moment ago.
    """
    while True:
        port = random.randrange(20000, 32000)
        run = range(port, port + span)
        if not any(p in _GIVEN for p in run) and all(_bindable(p) for p in run):
            _GIVEN.extend(run)
            return port


def free_ports(n: int, span: int = 1) -> list[int]:
    """``n`` ports as ``free_port`` gives them, their spans not overlapping."""
    return free_runs(*[span] * n)


def free_runs(*spans: int) -> list[int]:
    """One free run of ports per span (its first port), no two runs overlapping."""
    out: list[int] = []
    for span in spans:
        while True:
            port = free_port(span)
            if all(port + span <= other or other + width <= port for other, width in zip(out, spans, strict=False)):
                out.append(port)
                break
    return out


def _bindable(port: int) -> bool:
    # Every address, no SO_REUSEADDR: the strictest probe, so a socket of any state on
    # the port, on any interface (a TIME_WAIT included), rules it out.
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


@dataclass(frozen=True)
class WorkerPorts:
    """What one worker of ``pdserve up`` binds."""

    grpc: int
    metrics: int
    kv: int  # NIXL side channel
    kv_events: int  # ZMQ KV events; their replay socket is on the next port

    def flags(self) -> list[str]:
        out = ["--port", str(self.grpc), "--kv-port", str(self.kv), "--kv-events-port", str(self.kv_events)]
        return [*out, "--metrics-port", str(self.metrics)]


@dataclass(frozen=True, kw_only=True)
class UpPorts:
    """The port layout of one ``pdserve up``; the defaults are its flags' defaults.

    Prefill worker i: gRPC ``prefill_port + 2i``, metrics ``metrics_port_base + 2i``,
    NIXL ``kv_port_base + 2i``, KV events ``kv_events_port_base + 4i``; the decode
    worker takes the odd slots between (``decode_port`` for gRPC, base + 1 for metrics
    and NIXL, events base + 2).
    """

    host: str = flag("127.0.0.1", help="router listen address (workers are on loopback)")
    port: int = flag(8000, env="PDSERVE_ROUTER_PORT", help="router HTTP port")
    prefill_port: int = flag(50051, help="gRPC port of prefill worker 0 (worker i: port + 2i)")
    decode_port: int = flag(50052, help="decode worker gRPC port")
    kv_port_base: int = flag(5600, help="NIXL side-channel ports: decode base+1, prefill worker i base+2i")
    metrics_port_base: int = flag(
        9100, help="worker /metrics ports: decode base+1, prefill worker i base+2i (the router's is on --port)"
    )
    kv_events_port_base: int = flag(
        5557, help="KV event ports (each + replay on the next): decode base+2, prefill worker i base+4i"
    )
    prefill_workers: int = flag(1, help="number of prefill workers")
    colocated: bool = flag(
        False, help="baseline: one decode worker that prefills locally, no prefill worker, no KV transfer"
    )

    @classmethod
    def free(cls, prefill_workers: int = 1) -> UpPorts:
        """Free ports for a ``pdserve up`` beside others (tests, the bench)."""
        n = prefill_workers
        port, decode, metrics, prefill, kv, events = free_runs(2, 2, 2 * n, 2 * n, 2 * n, 4 * n)
        return cls(
            port=port,
            prefill_port=prefill,
            decode_port=decode,
            kv_port_base=kv,
            metrics_port_base=metrics,
            kv_events_port_base=events,
            prefill_workers=n,
        )

    def up_args(self) -> list[str]:
        """These ports as ``pdserve up`` flags."""
        out = ["--port", str(self.port), "--prefill-port", str(self.prefill_port)]
        out += ["--decode-port", str(self.decode_port), "--kv-port-base", str(self.kv_port_base)]
        out += ["--metrics-port-base", str(self.metrics_port_base)]
        out += ["--kv-events-port-base", str(self.kv_events_port_base)]
        return out + (["--colocated"] if self.colocated else ["--prefill-workers", str(self.prefill_workers)])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prefill(self, i: int) -> WorkerPorts:
        m, kv, ev = self.metrics_port_base, self.kv_port_base, self.kv_events_port_base
        return WorkerPorts(self.prefill_port + 2 * i, m + 2 * i, kv + 2 * i, ev + 4 * i)

    def decode(self) -> WorkerPorts:
        m, kv, ev = self.metrics_port_base, self.kv_port_base, self.kv_events_port_base
        return WorkerPorts(self.decode_port, m + 1, kv + 1, ev + 2)

    def prefill_port_of(self, i: int) -> int:
        return self.prefill(i).grpc

    def prefill_addrs(self) -> list[str]:
        return [f"127.0.0.1:{self.prefill(i).grpc}" for i in range(self.prefill_workers)]

    @property
    def decode_addr(self) -> str:
        return f"127.0.0.1:{self.decode_port}"

    def metrics_urls(self) -> tuple[str, str]:
        """/metrics of the first prefill worker and of the decode worker."""
        return (
            f"http://127.0.0.1:{self.prefill(0).metrics}/metrics",
            f"http://127.0.0.1:{self.decode().metrics}/metrics",
        )

    def ports(self) -> list[tuple[str, str, int]]:
        """Every ``(what, host, port)`` the cluster binds ("" host: every interface)."""
        lo, d = "127.0.0.1", self.decode()
        out = [("router HTTP (--port)", self.host, self.port), ("decode gRPC (--decode-port)", lo, d.grpc)]
        out += [("decode metrics", lo, d.metrics)]
        out += [("decode KV events", "", d.kv_events), ("decode KV events replay", "", d.kv_events + 1)]
        if not self.colocated:
            out.append(("decode NIXL side channel", lo, d.kv))
        for i in range(self.prefill_workers):
            name, p = f"prefill worker {i}", self.prefill(i)
            out += [(f"{name} gRPC", lo, p.grpc), (f"{name} metrics", lo, p.metrics)]
            out += [(f"{name} NIXL side channel", lo, p.kv)]
            out += [(f"{name} KV events", "", p.kv_events), (f"{name} KV events replay", "", p.kv_events + 1)]
        return out

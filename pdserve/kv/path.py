"""The KV path as the pulling (decode) engine measures it: per transfer bytes and seconds.

DESIGN §8: two engines sharing one H200 moved KV over UCX's TCP emulation at 0.4 GB/s
and every request still returned 200, only 100x slower. An engine records each
transfer here (vLLM: NixlConnector's per-transfer ``bytes_transferred`` and
``transfer_duration``; the sim: its modelled pulls). ``KvPath`` keeps histograms of
bandwidth and duration, and a moving (geometric) bandwidth over transfers of at least
``MIN_BYTES`` (smaller ones measure latency, not bandwidth). The first such transfer
classifies the path in the log (the warm-up's, when ``pdserve up`` runs one); while the
moving bandwidth is under the floor the path is ``slow``: one loud warning when it
becomes so, one line when it recovers, and the state travels in the worker's Load
(``WorkerLoad.kv_path_slow``: metrics, the router's /health).

Called on the engine's event loop only (vLLM's stat logger runs in its output handler).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Bytes/s: 10 MB/s (broken) to 100 GB/s (NVLink); DESIGN §8 saw 0.4, 3.4 and 68 GB/s.
BANDWIDTH_BUCKETS = (1e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10, 2.5e10, 5e10, 1e11)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MIN_BYTES = 1 << 20
# The moving bandwidth is geometric (an EWMA of log bandwidth): paths differ by 100x, and
# two transfers at 0.4 GB/s should flag a 25 GB/s path as slow, not eight.
ALPHA = 0.3
# Default floors by where the KV is staged: a CPU host's UCX over shared memory or TCP
# is slower by nature (3.4 GB/s staged in host memory on an H200, DESIGN §8; less on a
# small CPU box); GPU memory below 5 GB/s is not using NVLink/RDMA (the 0.4 GB/s case).
DEFAULT_FLOORS = {"cpu": 1e8, "cuda": 5e9}


def default_floor(device: str) -> float:
    """Bytes/s under which a path on ``device`` ("cpu", "cuda", ...) counts as slow."""
    return DEFAULT_FLOORS.get(device, DEFAULT_FLOORS["cuda"])


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[float, ...]  # upper bounds; counts has one more (+Inf)
    counts: tuple[int, ...]
    total: float  # sum of observed values


@dataclass(frozen=True)
class KvPathState:
    path: str = ""  # e.g. "nixl/UCX/cuda", "sim"; "" = this engine pulls no KV
    floor_bps: float = 0.0
    bandwidth_bps: float = 0.0  # moving; 0 = not measured yet
    slow: bool = False
    slow_transfers: int = 0  # transfers of >= MIN_BYTES under the floor, since start
    bandwidth: Histogram = Histogram(BANDWIDTH_BUCKETS, (0,) * (len(BANDWIDTH_BUCKETS) + 1), 0.0)
    duration: Histogram = Histogram(DURATION_BUCKETS, (0,) * (len(DURATION_BUCKETS) + 1), 0.0)


class KvPath:
    def __init__(self, path: str, floor_bps: float) -> None:
        if floor_bps < 0:
            raise ValueError("kv_bandwidth_floor must be >= 0")
        self._path = path
        self._floor = floor_bps
        self._bandwidth = 0.0
        self._slow = False
        self._slow_transfers = 0
        self._bw = [0] * (len(BANDWIDTH_BUCKETS) + 1)
        self._bw_sum = 0.0
        self._dur = [0] * (len(DURATION_BUCKETS) + 1)
        self._dur_sum = 0.0

    def record(self, nbytes: int, seconds: float) -> None:
        """One finished transfer."""
        self._dur[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._dur_sum += seconds
        if nbytes < MIN_BYTES or seconds <= 0:
            return
        bps = nbytes / seconds
        self._bw[bisect.bisect_left(BANDWIDTH_BUCKETS, bps)] += 1
        self._bw_sum += bps
        self._slow_transfers += bps < self._floor
        if not self._bandwidth:
            log.info(
                "KV path %s: first transfer %.1f MB in %.4f s = %s (floor %s): %s",
                self._path,
                nbytes / 1e6,
                seconds,
                _gbs(bps),
                _gbs(self._floor),
                "SLOW" if bps < self._floor else "ok",
            )
        self._bandwidth = bps if not self._bandwidth else self._bandwidth ** (1 - ALPHA) * bps**ALPHA
        self._update()

    def _update(self) -> None:
        slow = self._bandwidth < self._floor
        if slow and not self._slow:
            log.warning(
                "KV PATH SLOW: %s moves KV at %s, under the floor of %s (--kv-bandwidth-floor). Requests still "
                "succeed but wait for their KV: check the transport (UCX_PROTO_INFO=y shows it; DESIGN §8: "
                "two engines on one GPU fell back to TCP emulation at 0.4 GB/s); the router's --disagg-decider priced "
                "keeps prompts local while the path is this slow",
                self._path,
                _gbs(self._bandwidth),
                _gbs(self._floor),
            )
        elif self._slow and not slow:
            log.warning("KV path %s recovered: %s (floor %s)", self._path, _gbs(self._bandwidth), _gbs(self._floor))
        self._slow = slow

    def state(self) -> KvPathState:
        return KvPathState(
            self._path,
            self._floor,
            self._bandwidth,
            self._slow,
            self._slow_transfers,
            Histogram(BANDWIDTH_BUCKETS, tuple(self._bw), self._bw_sum),
            Histogram(DURATION_BUCKETS, tuple(self._dur), self._dur_sum),
        )


def _gbs(bps: float) -> str:
    return f"{bps / 1e9:.3g} GB/s"

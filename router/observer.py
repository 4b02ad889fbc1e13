"""What the orchestrator tells about each request's placement and recovery (metrics)."""

from __future__ import annotations

from typing import Protocol

from pdserve.types import WorkerId


class Observer(Protocol):
    """Called on the event loop; must not block. router/metrics.py implements it."""

    def placed(self, role: str, worker: WorkerId) -> None: ...

    def disaggregated(self, remote: bool, reason: str) -> None: ...

    def handed_over(self, seconds: float, worker_s: float) -> None:
        """A remote prefill's handover: Prefill returned → first decode token at the router;
        ``worker_s`` of it the decode worker's own (0: not reported)."""
        ...

    def prefix(self, matched_tokens: int, prompt_tokens: int) -> None: ...

    def dispatched(self, queued_s: float) -> None:
        """Arrival to the first placement (tokenize, validate, queue, place)."""
        ...

    def retried(self, kind: str) -> None:
        """kind: prefill (another prefill worker), local_prefill (the decode worker
        prefills after prefill failures), decode (placed again before the first token)."""
        ...

    def migrated(self) -> None: ...

    def kv_released(self) -> None:
        """A decode worker freed a remote prefill's KV that no decode read."""
        ...


class NullObserver:
    """Observes nothing (an orchestrator built without metrics)."""

    def placed(self, role: str, worker: WorkerId) -> None:
        pass

    def disaggregated(self, remote: bool, reason: str) -> None:
        pass

    def handed_over(self, seconds: float, worker_s: float) -> None:
        pass

    def prefix(self, matched_tokens: int, prompt_tokens: int) -> None:
        pass

    def dispatched(self, queued_s: float) -> None:
        pass

    def retried(self, kind: str) -> None:
        pass

    def migrated(self) -> None:
        pass

    def kv_released(self) -> None:
        pass

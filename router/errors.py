"""Every error the router raises about a request, as one ladder.

``RouterError``
├── ``BadRequestError``      the request asks for what this server cannot do (``param``)
├── ``UnknownModelError``    no pool serves the model
├── ``RequestTimeout``       the request's deadline passed
├── ``NoWorkersError``       no live decode worker serves the model
├── ``Refused``              not admitted; may retry after ``retry_after_s``
│   ├── ``Overloaded``       no slot, queue full or queue timeout
│   └── ``RateLimited``      the client's per-minute budget is used up
└── ``WorkerFailure``        a worker failed the request (``worker``)
    ├── ``WorkerError``      a worker RPC ended with a gRPC status (``code``)
    ├── ``BrokenStreamError``  a decode stream ended without finishing
    └── ``AttemptTimeout``   an attempt ran past its own timeout (not the request's)

They map to HTTP statuses and OpenAI error bodies in one place: router/api/errors.py.
"""

from __future__ import annotations

import grpc

from pdserve.types import WorkerId

# Failures of the worker, worth trying elsewhere. Never: a request the engine refuses
# (INVALID_ARGUMENT) or the request's own deadline (DEADLINE_EXCEEDED).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,  # gone, draining, engine dead
        grpc.StatusCode.INTERNAL,  # the engine failed this request
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,  # cancelled by the worker (we cancel by CancelledError)
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class RouterError(Exception):
    """Base of every error the router raises about one request."""


class BadRequestError(RouterError, ValueError):
    """The request asks for something this server cannot do; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModelError(RouterError, LookupError):
    pass


class RequestTimeout(RouterError):
    """The request's deadline passed before it finished: the router saw it, or a worker
    RPC carrying what was left of it ended with DEADLINE_EXCEEDED."""

    def __init__(self) -> None:
        super().__init__("the request did not finish within its deadline")


class NoWorkersError(RouterError):
    """No live decode worker serves the model."""


class Refused(RouterError):
    """Not admitted; the client may try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(Refused):
    """No slot free and the queue full, or no slot within the queue timeout."""


class RateLimited(Refused):
    """The client's requests or tokens per minute are used up."""


class WorkerFailure(RouterError):
    """A worker failed the request; ``retryable``: worth trying on another worker."""

    def __init__(self, worker: WorkerId, message: str) -> None:
        super().__init__(message)
        self.worker = worker

    @property
    def retryable(self) -> bool:
        return True


class WorkerError(WorkerFailure):
    """A worker RPC failed; ``code`` is the gRPC status."""

    def __init__(self, worker: WorkerId, code: grpc.StatusCode, details: str) -> None:
        super().__init__(worker, f"{worker}: {code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class BrokenStreamError(WorkerFailure):
    """The decode stream ended without finishing (worker aborted or vanished)."""

    def __init__(self, worker: WorkerId, message: str) -> None:
        super().__init__(worker, f"{worker}: {message}")


class AttemptTimeout(WorkerFailure):
    """One attempt on ``worker`` ran past its per-attempt timeout (router/request.py
    ``Timeouts``) while the request still had time: the worker is slow or wedged."""

    def __init__(self, worker: WorkerId, what: str, seconds: float) -> None:
        super().__init__(worker, f"{worker}: no {what} within {seconds:g} s")

#!/usr/bin/env python3
"""Container health check (Docker HEALTHCHECK; Kubernetes uses its own native probes).

    pdserve-healthcheck http [PORT]   router: GET /health answers 200 (every model it knows has a decode worker)
    pdserve-healthcheck grpc [PORT]   worker: grpc.health.v1 Check(service="") is SERVING

Exit 0 when healthy, 1 when not (Docker's convention). Without PORT: the router's
$PDSERVE_ROUTER_PORT (default 8000); the worker's $PDSERVE_PORT, else the role defaults
50051 (prefill) and 50052 (decode) — one worker runs per container, so whichever answers.
A worker turns NOT_SERVING as soon as it starts draining after SIGTERM.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0
WORKER_DEFAULT_PORTS = (50051, 50052)


def http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def grpc_serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("http", "grpc") or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "http":
        port = int(argv[1] if len(argv) > 1 else os.environ.get("PDSERVE_ROUTER_PORT", "8000"))
        return 0 if http_ok(port) else 1
    given = argv[1] if len(argv) > 1 else os.environ.get("PDSERVE_PORT")
    ports = (int(given),) if given else WORKER_DEFAULT_PORTS
    return 0 if any(grpc_serving(p) for p in ports) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

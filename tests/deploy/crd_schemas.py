"""JSON Schemas for the prometheus-operator resources deploy/k8s uses (monitoring.coreos.com/v1).

kubernetes-validate knows only built-in kinds. Instead of a generated CRD model package,
this covers the fields the manifests use, with the types and names of the operator's API reference
(ServiceMonitorSpec, Endpoint, PodMonitorSpec, PodMetricsEndpoint), and rejects any other
field: a typo fails here instead of being pruned silently by the API server.
"""

from __future__ import annotations

from typing import Any

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_SELECTOR = _closed(
    {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": _closed(
                {"key": {"type": "string"}, "operator": {"type": "string"}, "values": {"type": "array"}},
                ("key", "operator"),
            ),
        },
    }
)
_ENDPOINT = {
    "port": {"type": "string"},
    "path": {"type": "string"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
}
_METADATA = _closed(
    {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP, "annotations": _STRING_MAP},
    ("name",),
)


def _monitor(kind: str, spec: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    return _closed(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": _closed(spec, required),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _monitor(
        "ServiceMonitor",
        {
            "jobLabel": {"type": "string"},
            "selector": _SELECTOR,
            "namespaceSelector": _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array"}}),
            "endpoints": {"type": "array", "minItems": 1, "items": _closed(_ENDPOINT)},
        },
        ("selector", "endpoints"),
    ),
    "PodMonitor": _monitor(
        "PodMonitor",
        {
            "jobLabel": {"type": "string"},
            "selector": _SELECTOR,
            "namespaceSelector": _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array"}}),
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _closed(_ENDPOINT)},
        },
        ("selector", "podMetricsEndpoints"),
    ),
}

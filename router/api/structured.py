"""Structured outputs: ``response_format`` and ``structured_outputs`` → the fields of
vLLM's ``StructuredOutputsParams``, as JSON; the workers build vLLM's object from them
(pdserve/engine/vllm_compat.py ``structured_outputs``). Raises ``BadRequestError``
naming the field."""

from __future__ import annotations

import json
from typing import Any

from router.api.schemas import SamplingFields
from router.errors import BadRequestError

_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def constraint(req: SamplingFields) -> str:
    """``structured_outputs`` with ``response_format`` applied over it, as vLLM's
    ``structured_outputs_from_response_format`` does: vLLM's ``StructuredOutputsParams``
    fields, exactly one constraint among them; "" for none."""
    so = req.structured_outputs.model_dump(by_alias=True, exclude_defaults=True) if req.structured_outputs else None
    rf = req.response_format
    if rf is not None and rf.type != "text":
        if rf.type == "json_object":
            override: dict[str, Any] = {"json_object": True}
        elif rf.type == "json_schema":
            if rf.json_schema is None or rf.json_schema.json_schema is None:
                raise BadRequestError(
                    "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
                    "response_format",
                )
            override = {"json": rf.json_schema.json_schema}
        else:
            raise BadRequestError("response_format structural_tag is not supported by pdserve yet", "response_format")
        so = {**(so or {}), **override}
    if so is None:
        return ""
    if sum(so.get(name) is not None for name in _CONSTRAINTS) != 1:
        raise BadRequestError(
            "You can only use one kind of structured outputs constraint, and must use one", "structured_outputs"
        )
    if so.get("structural_tag") is not None:
        raise BadRequestError("structural_tag is not supported by pdserve yet", "structured_outputs")
    if so.get("choice") is not None and not so["choice"]:
        raise BadRequestError("choice must list at least one option", "structured_outputs")
    return json.dumps(so, separators=(",", ":"))

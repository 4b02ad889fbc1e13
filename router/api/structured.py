"""Structured outputs: ``response_format`` and ``structured_outputs`` → the fields of
vLLM's ``StructuredOutputsParams``, as JSON; the workers build vLLM's object from them
(pdserve/engine/vllm_compat.py ``structured_outputs``). Raises ``BadRequestError``
naming the field.

Structural tags, as ``vllm serve`` 0.32 takes them (vllm/entrypoints/generate/base/protocol.py):
a ``response_format`` of type ``structural_tag``, legacy (``structures`` + ``triggers``) or
current (``format``), becomes ``structural_tag``, the JSON of vLLM's model of it; in
``structured_outputs`` it is that JSON already, as a string. vLLM refuses a bad tag while it
validates the request, with "Invalid <field> structural_tag specification." naming the field
the tag came in, after two checks: its own Python (the request models' shapes, the string
being a JSON object, a legacy tag's keys), reproduced here, and xgrammar's compiler, which the
router does not load (it pulls in torch). A tag that only xgrammar refuses is refused by the
workers, which run the same check: a 400 ("Invalid structural tag specification.") without a
``param``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from router.api.schemas import LegacyStructuralTagFormat, ResponseFormat, SamplingFields, StructuralTagFormat
from router.errors import BadRequestError

_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
# Pydantic's smart union, as vLLM's ``AnyStructuralTagResponseFormat``: a body that fits
# both shapes is read as the legacy one (it sets more fields).
_TAG_FORMATS: TypeAdapter[LegacyStructuralTagFormat | StructuralTagFormat] = TypeAdapter(
    LegacyStructuralTagFormat | StructuralTagFormat
)
# vLLM's message for a tag nested past its limit (64 + 16 levels), which the workers check;
# here only for a tag too deep for Python's JSON parser.
_TOO_DEEP = "The JSON schema is nested too deeply: objects and arrays may nest at most 64 levels"


def constraint(req: SamplingFields) -> str:
    """``structured_outputs`` with ``response_format`` applied over it, as vLLM's
    ``structured_outputs_from_response_format`` does: vLLM's ``StructuredOutputsParams``
    fields, exactly one constraint among them; "" for none."""
    so = req.structured_outputs.model_dump(by_alias=True, exclude_defaults=True) if req.structured_outputs else None
    if so is not None and so.get("structural_tag") is not None:
        _check_tag(so["structural_tag"], "structured_outputs")  # vLLM checks it before response_format
    rf = req.response_format
    if rf is not None and rf.type != "text":
        so = {**(so or {}), **_override(rf)}
    if so is None:
        return ""
    if sum(so.get(name) is not None for name in _CONSTRAINTS) != 1:
        raise BadRequestError(
            "You can only use one kind of structured outputs constraint, and must use one", "structured_outputs"
        )
    if so.get("choice") is not None and not so["choice"]:
        raise BadRequestError("choice must list at least one option", "structured_outputs")
    return json.dumps(so, separators=(",", ":"))


def _override(rf: ResponseFormat) -> dict[str, Any]:
    """The ``StructuredOutputsParams`` fields a ``response_format`` other than text sets."""
    if rf.type == "json_object":
        return {"json_object": True}
    if rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.json_schema is None:
            raise BadRequestError(
                "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
                "response_format",
            )
        return {"json": rf.json_schema.json_schema}
    return {"structural_tag": _response_format_tag(rf)}


def _response_format_tag(rf: ResponseFormat) -> str:
    """The tag's JSON as vLLM writes it: its model dumped by alias, extra fields kept."""
    try:
        tag = _TAG_FORMATS.validate_python(rf.model_dump(by_alias=True, exclude_unset=True))
    except ValidationError:
        raise _invalid("response_format") from None
    text = json.dumps(tag.model_dump(by_alias=True))
    _check_tag(text, "response_format")
    return text


def _check_tag(tag: Any, param: str) -> None:
    """What vLLM's Python checks of a tag before xgrammar compiles it
    (``validate_structural_tag_payload``, ``validate_xgrammar_grammar``): a non-empty string
    of a JSON object; a legacy one (with ``structures``) lists objects with ``begin``,
    ``schema`` and ``end``, and has ``triggers``."""
    if not isinstance(tag, str) or not tag:
        raise _invalid(param)
    try:
        doc = json.loads(tag)
    except RecursionError:
        raise BadRequestError(_TOO_DEEP) from None
    except ValueError:
        raise _invalid(param) from None
    if not isinstance(doc, dict):
        raise _invalid(param)
    if "structures" in doc and not (_legacy_structures(doc["structures"]) and "triggers" in doc):
        raise _invalid(param)


def _legacy_structures(structures: Any) -> bool:
    keys = ("begin", "schema", "end")
    return isinstance(structures, list) and all(isinstance(s, dict) and all(k in s for k in keys) for s in structures)


def _invalid(param: str) -> BadRequestError:
    return BadRequestError(f"Invalid {param} structural_tag specification.", param)

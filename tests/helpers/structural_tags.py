"""Structural tags in request bodies, with what ``vllm serve`` 0.32 makes of each: the
``structural_tag`` string it hands its engine, or the field its 400 names. The router's
unit tests hold the router to these (tests/unit/test_structural_tags.py); the contract
test holds them to vLLM's own request models (tests/contract/test_openai_fields.py), so
they cannot drift from vLLM unnoticed."""

from __future__ import annotations

import json
from typing import Any

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
LEGACY_STRUCTURE = {"begin": "<a>", "schema": SCHEMA, "end": "</a>"}
LEGACY = {"type": "structural_tag", "structures": [LEGACY_STRUCTURE], "triggers": ["<a"]}
FORMAT = {"type": "tag", "begin": "<x>", "content": {"type": "regex", "pattern": "(ab){2}"}, "end": "</x>"}
CURRENT = {"type": "structural_tag", "format": FORMAT}


def rf(tag: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": tag}


def so(tag: Any) -> dict[str, Any]:
    return {"structured_outputs": {"structural_tag": tag}}


# Request fields → the structural_tag string vLLM builds (json.dumps of its model, by alias:
# its field order, ", " and ": " separators, extra fields kept after the declared ones).
ACCEPTED: dict[str, tuple[dict[str, Any], str]] = {
    "format": (
        rf(CURRENT),
        '{"type": "structural_tag", "format": {"type": "tag", "begin": "<x>", '
        '"content": {"type": "regex", "pattern": "(ab){2}"}, "end": "</x>"}}',
    ),
    "legacy": (
        rf(LEGACY),
        '{"type": "structural_tag", "structures": [{"begin": "<a>", "schema": {"type": "object", '
        '"properties": {"n": {"type": "integer"}}}, "end": "</a>"}], "triggers": ["<a"]}',
    ),
    "legacy_reordered_with_extras": (
        rf(
            {
                "triggers": ["<a"],
                "note": 1,
                "structures": [{"end": "</a>", "x": 2, "schema": {}, "begin": "<a>"}],
                "type": "structural_tag",
            }
        ),
        '{"type": "structural_tag", "structures": [{"begin": "<a>", "schema": {}, "end": "</a>", "x": 2}], '
        '"triggers": ["<a"], "note": 1}',
    ),
    "both_shapes_read_as_legacy": (
        rf({**CURRENT, **LEGACY}),
        '{"type": "structural_tag", "structures": [{"begin": "<a>", "schema": {"type": "object", '
        '"properties": {"n": {"type": "integer"}}}, "end": "</a>"}], "triggers": ["<a"], '
        '"format": {"type": "tag", "begin": "<x>", "content": {"type": "regex", "pattern": "(ab){2}"}, '
        '"end": "</x>"}}',
    ),
    "structured_outputs_string": (
        so('{"format": {"type": "const_string", "value": "hi"}}'),
        '{"format": {"type": "const_string", "value": "hi"}}',
    ),
    "response_format_over_structured_outputs": (
        {
            **so('{"format": {"type": "const_string", "value": "hi"}}'),
            **rf({**CURRENT, "format": {"type": "any_text"}}),
        },
        '{"type": "structural_tag", "format": {"type": "any_text"}}',
    ),
}

# Request fields → the param of vLLM's 400, which the router gives itself: the request
# models' shapes, and what vLLM's Python checks before xgrammar compiles the tag.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "no_shape": (rf({"type": "structural_tag"}), "response_format"),
    "legacy_without_triggers": (rf({"type": "structural_tag", "structures": [LEGACY_STRUCTURE]}), "response_format"),
    "legacy_structure_without_begin": (
        rf({**LEGACY, "structures": [{"schema": SCHEMA, "end": "</a>"}]}),
        "response_format",
    ),
    "legacy_schema_not_an_object": (
        rf({**LEGACY, "structures": [{**LEGACY_STRUCTURE, "schema": "x"}]}),
        "response_format",
    ),
    "format_with_bad_legacy_keys": (rf({**CURRENT, "structures": "x"}), "response_format"),
    "empty_string": (so(""), "structured_outputs"),
    "not_a_string": (so(CURRENT), "structured_outputs"),
    "not_json": (so("{"), "structured_outputs"),
    "not_an_object": (so("[1]"), "structured_outputs"),
    "string_legacy_without_triggers": (so(json.dumps({"structures": [LEGACY_STRUCTURE]})), "structured_outputs"),
    "string_legacy_structure_without_schema": (
        so(json.dumps({"structures": [{"begin": "<a>", "end": "</a>"}], "triggers": ["<a"]})),
        "structured_outputs",
    ),
    "string_checked_under_response_format": (
        {**so(""), **rf(CURRENT)},
        "structured_outputs",
    ),
}

# Request fields the router passes on and vLLM refuses in xgrammar's compiler (the param of
# vLLM's 400): the workers refuse them with vLLM's own check, a 400 without a param.
BY_WORKERS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_format_type": (rf({"type": "structural_tag", "format": {"type": "bogus"}}), "response_format"),
    "format_not_an_object": (rf({"type": "structural_tag", "format": 1}), "response_format"),
    "legacy_trigger_matching_no_tag": (rf({**LEGACY, "triggers": ["<b"]}), "response_format"),
    "legacy_structure_without_schema": (
        rf({**LEGACY, "structures": [{"begin": "<a>", "end": "</a>"}]}),
        "response_format",
    ),
    "string_unknown_format_type": (so(json.dumps({"format": {"type": "bogus"}})), "structured_outputs"),
    "string_without_format": (so(json.dumps({"type": "structural_tag"})), "structured_outputs"),
}

"""Arguments prefixes from a partial parse, for mistral's pre-v11 JSON array, and ``dumps``.

vLLM returns ``json.dumps(value, ensure_ascii=False)`` of the model's arguments, not the model's
own text. A stream sends only a prefix the final string is sure to start with: the partial
value (incomplete strings kept, incomplete numbers and literals left out) dumped the same way,
minus every closing quote and bracket at its end. Re-parsing on every delta is O(n) per delta;
hermes and llama3_json, whose arguments can be long, use ``json_stream`` instead.
"""

from __future__ import annotations

import json
from typing import Any

from partial_json_parser import Allow
from partial_json_parser import loads as partial_loads
from partial_json_parser.core.exceptions import MalformedJSON, PartialJSON

# Numbers and true/false/null are left out until something follows them: "1" may grow to "10"
# and "1.5e" parses as 1.5, whose dumps is no prefix of 1500.0's.
SAFE_PARTS = Allow.STR | Allow.OBJ | Allow.ARR
CLOSED_STRINGS = Allow.OBJ | Allow.ARR
"""Leaves out unfinished strings too: a name in the result is the whole name."""


def parse_partial(raw: str, allow: Allow = SAFE_PARTS) -> Any:
    """The value ``raw`` so far (``None`` if nothing usable yet); ``raw`` must start at a JSON value."""
    try:
        return partial_loads(raw, allow)
    # The library asserts (AssertionError) on text after a closed value, e.g. a half-typed end tag.
    except (MalformedJSON, PartialJSON, ValueError, AssertionError):
        return None


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def stable_prefix(value: Any) -> str:
    """A prefix of ``dumps(final)`` for any completion of the partial ``value``."""
    text = dumps(value).rstrip('"}]')
    if text and "\ud800" <= text[-1] <= "\udbff":
        text = text[:-1]  # half of a surrogate pair: the final holds the whole character
    return text

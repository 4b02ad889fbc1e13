"""The parsers by the names ``vllm serve`` takes for ``--reasoning-parser`` and ``--tool-call-parser``.

One place registers them; a name not here fails loudly, naming the choices. The router's
config checks the flag values against these keys at start-up (the HTTP wiring builds one
parser per request with ``reasoning_parser(name, ...)`` / ``tool_parser(name, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from router.parsers import reasoning
from router.parsers.base import IdFactory, ReasoningParser, ToolParser
from router.parsers.hermes import HermesToolParser
from router.parsers.llama3_json import Llama3JsonToolParser
from router.parsers.mistral import MistralToolParser
from router.parsers.pythonic import PythonicToolParser

REASONING_PARSERS: dict[str, reasoning.ThinkRules] = {
    "deepseek_r1": reasoning.DEEPSEEK_R1,
    "qwen3": reasoning.QWEN3,
}

ToolParserFactory = Callable[..., ToolParser]

TOOL_PARSERS: dict[str, ToolParserFactory] = {
    "hermes": HermesToolParser,
    # vLLM registers qwen3_json as an alias of hermes (tool_parsers/__init__.py:197-203).
    "qwen3_json": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
}


def _unknown(kind: str, name: str, choices: Mapping[str, Any]) -> ValueError:
    return ValueError(f"{kind}: unknown parser {name!r}; choose one of {', '.join(sorted(choices))}")


def reasoning_parser(
    name: str, prompt: str = "", chat_template_kwargs: Mapping[str, Any] | None = None
) -> ReasoningParser:
    """The ``name`` parser for one request whose rendered prompt is ``prompt``."""
    rules = REASONING_PARSERS.get(name)
    if rules is None:
        raise _unknown("reasoning_parser", name, REASONING_PARSERS)
    thinking = reasoning.starts_in_reasoning(rules, prompt, chat_template_kwargs or {})
    return reasoning.ThinkReasoningParser(rules, thinking=thinking)


def tool_parser(name: str, new_id: IdFactory | None = None) -> ToolParser:
    """The ``name`` parser; ``new_id`` replaces the format's own id generator (tests)."""
    factory = TOOL_PARSERS.get(name)
    if factory is None:
        raise _unknown("tool_call_parser", name, TOOL_PARSERS)
    return factory() if new_id is None else factory(new_id)

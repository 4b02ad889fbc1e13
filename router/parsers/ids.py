"""Tool-call ids in vLLM 0.32's formats. Parsers take an ``IdFactory`` so tests can inject a counter."""

from __future__ import annotations

import secrets
import string

_ALPHANUMERIC = string.ascii_letters + string.digits


def openai_tool_call_id() -> str:
    """``chatcmpl-tool-`` and 16 hex digits (vllm/renderers/chat_utils.py:2328-2333, utils/__init__.py:11-12)."""
    return f"chatcmpl-tool-{secrets.randbits(64):016x}"


def mistral_tool_call_id() -> str:
    """9 alphanumerics: mistral-common rejects other ids in the next turn (vllm/parser/mistral.py:98-110)."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))

"""A prompt that cannot fit the model's context is refused before it is templated or
tokenized: its text is bounded by ``chars_per_token`` x ``max_model_len`` (no token is
longer than that many characters in practice), and every chat message costs at least one
token. The body limit (api/limits.py) bounds the bytes; this bounds the work a body
within it can ask of the tokenizer."""

from __future__ import annotations

import math
from typing import Any

from router.api.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from router.errors import BadRequestError

PROMPT_CHARS_PER_TOKEN = 32  # the default bound (--prompt-chars-per-token)


def check(body: CompletionRequest | ChatCompletionRequest, max_model_len: int, chars_per_token: int) -> None:
    """``BadRequestError`` (400) when the prompt, or any prompt of a batch, is surely over
    ``max_model_len`` tokens."""
    if isinstance(body, ChatCompletionRequest):
        least = math.ceil(sum(map(_message_chars, body.messages)) / chars_per_token)
        least += len(body.messages)
        param = "messages"
    else:
        prompts: list[Any] = [body.prompt] if isinstance(body.prompt, str) or _ids(body.prompt) else body.prompt
        sizes = (math.ceil(len(p) / chars_per_token) if isinstance(p, str) else len(p) for p in prompts)
        least = max(sizes, default=0)  # an empty batch is validate's to refuse
        param = "prompt"
    if least > max_model_len:
        raise BadRequestError(
            f"This model's maximum context length is {max_model_len} tokens; the prompt is at least "
            f"{least} tokens long (refused before tokenizing).",
            param,
        )


def _ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


def _message_chars(message: ChatMessage) -> int:
    content = message.content
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(len(p) if isinstance(p, str) else len(str(p.get("text") or "")) for p in content)
    else:
        chars = 0
    return chars + (len(str(message.tool_calls)) if message.tool_calls else 0)

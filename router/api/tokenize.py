"""``/tokenize`` and ``/detokenize``: bodies and answers as vLLM 0.32's server has them
(vllm/entrypoints/serve/tokenize/: protocol.py, serving.py).

The chat form is read as the chat completion request of the same messages and template
options, and rendered by ``validate.chat_prompt``: the path a chat completion takes, so
/tokenize answers exactly the prompt ids that completion generates from, whatever the
chat rendering learns later.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.api import validate
from router.api.schemas import ChatCompletionRequest, Text
from router.chat import ChatOptions
from router.errors import BadRequestError
from router.pool import ModelPool
from router.tokenizer import TokenIdsOnly


class TokenizeCompletionRequest(BaseModel):
    """vLLM's ``TokenizeCompletionRequest``: one text prompt."""

    model_config = ConfigDict(extra="allow")  # unknown fields are ignored, as vLLM does

    model: str | None = None
    prompt: Text
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(BaseModel):
    """vLLM's ``TokenizeChatRequest``: its fields are chat completion fields (less
    ``return_token_strs``), checked by ``ChatCompletionRequest`` itself."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Any]
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = None

    def chat_request(self) -> ChatCompletionRequest:
        """The chat completion request of these messages and template options; a body it
        refuses is a 400 naming the field, as any request body's."""
        fields = self.model_dump(include=_CHAT_FIELDS, exclude_unset=True)
        if self.tools:  # rendered for their tokens, as vLLM's /tokenize does: no tool choice to check
            fields["tool_choice"] = "none"
        try:
            return ChatCompletionRequest.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None


_CHAT_FIELDS = set(TokenizeChatRequest.model_fields) - {"return_token_strs"}

# The union vLLM's route takes, in its order (pydantic reads a body as whichever fits).
TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]


def tokenize(body: TokenizeRequest, pool: ModelPool, chat: ChatOptions | None = None) -> dict[str, Any]:
    """vLLM's ``TokenizeResponse``. A text prompt is tokenized as a completion's (no length
    check: vLLM's tokenize has none); chat messages as a chat completion renders them."""
    if isinstance(body, TokenizeChatRequest):
        ids = validate.chat_prompt(body.chat_request(), pool, chat)
    else:
        try:
            ids = pool.tokenizer.encode(body.prompt, body.add_special_tokens)
        except ValueError as exc:  # a model without a tokenizer
            raise BadRequestError(str(exc), "prompt") from None
    strs = pool.tokenizer.token_strs(ids) if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": pool.max_model_len, "tokens": ids, "token_strs": strs}


def detokenize(body: DetokenizeRequest, pool: ModelPool) -> dict[str, Any]:
    """vLLM's ``DetokenizeResponse``: the ids decoded as the tokenizer decodes them, special
    tokens kept; ids past the vocabulary decode to nothing, as they do there."""
    if isinstance(pool.tokenizer, TokenIdsOnly):
        raise BadRequestError("this model has no tokenizer: token ids cannot be decoded", "tokens")
    try:
        return {"prompt": pool.tokenizer.decode(body.tokens, skip_special_tokens=False)}
    except OverflowError:  # past what the tokenizer library takes (2**32); vLLM's answer is a 400 too
        raise BadRequestError("token ids must be below the vocabulary size", "tokens") from None

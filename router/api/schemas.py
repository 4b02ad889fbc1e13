"""OpenAI request bodies, field for field vLLM 0.32's request models (DESIGN §7).

Every field of vLLM's ``ChatCompletionRequest`` and ``CompletionRequest`` is one of:
- **declared** here and honoured as ``vllm serve`` honours it, with vLLM's nullability
  (``None`` where vLLM takes ``null`` as "default");
- **refused** (``REFUSED``): accepted only with a value that asks for nothing (its
  default, ``null``); anything else gets a 400 naming the field (api/validate.py);
- for fields in neither vLLM model: ignored and logged once, as vLLM does.

``tests/unit/test_request_fields.py`` holds this list against vLLM's own models.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

MAX_STOP_STRINGS = 4
INT32_MAX, INT64 = 2**31 - 1, 2**63  # what the worker protocol carries (proto/pdserve/v1/worker.proto)


def _encodable(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it has a lone surrogate)") from None
    return v


Text = Annotated[str, AfterValidator(_encodable)]  # what reaches the tokenizer
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class StreamOptions(BaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class JsonSchema(BaseModel):
    """``response_format.json_schema``: OpenAI's shape (the schema under ``schema``)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchema | None = None

    # A structural tag's own fields: read as ``StructuralTagFormat`` or
    # ``LegacyStructuralTagFormat`` (api/structured.py), so that a malformed one is a 400
    # naming ``response_format``, as vLLM's before-validator names it.
    model_config = ConfigDict(extra="allow")


class LegacyStructure(BaseModel):
    """One of a legacy structural tag's ``structures`` (vLLM's ``LegacyStructuralTag``)."""

    model_config = ConfigDict(extra="allow")  # kept, as vLLM keeps them, in the tag's JSON

    begin: str
    structure_schema: dict[str, Any] | None = Field(None, alias="schema")
    end: str


class LegacyStructuralTagFormat(BaseModel):
    """``response_format`` ``{"type": "structural_tag", "structures": [...], "triggers": [...]}``
    (vLLM's ``LegacyStructuralTagResponseFormat``)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["structural_tag"]
    structures: list[LegacyStructure]
    triggers: list[str]


class StructuralTagFormat(BaseModel):
    """``response_format`` ``{"type": "structural_tag", "format": {...}}`` (vLLM's
    ``StructuralTagResponseFormat``): ``format`` is xgrammar's, judged by the workers."""

    model_config = ConfigDict(extra="allow")

    type: Literal["structural_tag"]
    format: Any


class StructuredOutputs(BaseModel):
    """vLLM's ``StructuredOutputsParams`` as a request carries it: exactly one constraint."""

    model_config = ConfigDict(extra="forbid")

    json_: str | dict[str, Any] | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: Any = None  # a JSON string; anything else is a 400 naming structured_outputs, as in vLLM
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None


class SamplingFields(BaseModel):
    """Fields both routes share. ``None`` on a sampling knob means "the server's default":
    the model's generation config, else vLLM's neutral value (api/validate.py)."""

    # Refused and unknown fields land in ``model_extra``; api/validate.py sorts them.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # -1 and 0 disable
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: Annotated[int, Field(ge=-INT64, lt=INT64)] | None = None
    stop: Text | list[Text] | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[Text] = Field(default_factory=list)
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # no effect, as in vLLM
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True  # no effect on fast tokenizers, as in vLLM
    priority: Annotated[int, Field(ge=-INT64, lt=INT64)] = 0
    cache_salt: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None  # logprobs name tokens "token_id:<id>"
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)  # the response id's suffix, as in vLLM
    length_penalty: float = 1.0  # beam search only: no effect, as in vLLM without it
    truncate_prompt_tokens: Annotated[int, Field(ge=-1, le=INT64 - 1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    prompt_logprobs: int | None = None  # each prompt position's logprob and the top k (not streamed)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences")
        if v == "" or (isinstance(v, list) and "" in v):
            raise ValueError("stop sequences must be non-empty")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(SamplingFields):
    logprobs: int | None = None  # the sampled token's logprob and the top k
    prompt: Text | Annotated[list[TokenId], Field(min_length=1)] | list[Text] | list[list[TokenId]]
    max_tokens: int | None = 16
    n: int = 1
    echo: bool | None = False
    add_special_tokens: bool = True


class ChatMessage(BaseModel):
    """One message as vLLM's server takes it: any role (the template decides what it
    means), content as a string or parts (router/chat.py reads them), and the fields chat
    templates read. Other keys are kept, as vLLM keeps them (``task``, ...)."""

    model_config = ConfigDict(extra="allow")

    role: Annotated[str, Field(min_length=1)]
    content: Text | list[dict[str, Any] | Text] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message's answer to one
    reasoning: str | None = None  # an assistant's earlier reasoning (interleaved thinking)

    def as_sent(self) -> dict[str, Any]:
        """The message's keys as the client sent them (absent ones absent, as vLLM sees them)."""
        return self.model_dump(exclude_unset=True)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None

    @model_serializer(mode="wrap")
    def _as_vllm(self, handler: Any) -> dict[str, Any]:
        """As vLLM hands it to the chat template: declared keys, ``strict`` and
        ``defer_loading`` only when set."""
        data = {k: v for k, v in handler(self).items() if k in type(self).model_fields}
        for key in ("strict", "defer_loading"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionDefinition
    defer_loading: bool | None = None

    @model_serializer(mode="wrap")
    def _as_vllm(self, handler: Any) -> dict[str, Any]:
        """As vLLM hands it to the chat template: declared keys, ``defer_loading`` only when set."""
        data = {k: v for k, v in handler(self).items() if k in type(self).model_fields}
        if data.get("defer_loading") is None:
            data.pop("defer_loading", None)
        return data

    @model_validator(mode="after")
    def _defer_loading(self) -> Tool:
        if self.defer_loading is not None and self.function.defer_loading is None:
            self.function.defer_loading = self.defer_loading
        return self


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    function: NamedFunction
    type: Literal["function"] = "function"


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool | None = False
    top_logprobs: Annotated[int, BeforeValidator(lambda v: 0 if v is None else v)] = 0  # null is 0, as in vLLM
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    include_reasoning: bool = True  # no reasoning parser runs, so nothing to include or hide
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = "none"
    parallel_tool_calls: bool | None = True
    reasoning_effort: ReasoningEffort | None = None
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None  # needs the router's --trust-request-chat-template
    chat_template_kwargs: dict[str, Any] | None = None
    return_prompt_text: bool | None = None  # the rendered prompt in the response (vLLM's prompt_text)


class Refused(NamedTuple):
    """A vLLM field pdserve does not honour yet: ``neutral`` values ask for nothing and
    pass; any other value is a 400 naming the field, with ``why``."""

    neutral: tuple[Any, ...]
    why: str


_NOT_YET = "is not supported by pdserve yet"
_OFF = (None, False)
_SHARED_REFUSED: dict[str, Refused] = {
    "logprob_token_ids": Refused((None, []), f"{_NOT_YET} (logprobs)"),
    "use_beam_search": Refused((False,), "beam search is not supported in P/D serving"),
    "watermarking": Refused(_OFF, f"{_NOT_YET}"),
    "session_id": Refused((None,), f"{_NOT_YET}"),
    "routed_experts_prompt_start": Refused((0,), "MoE routing capture is not supported"),
    "return_token_offsets": Refused(_OFF, f"{_NOT_YET}"),
    "mm_payload": Refused(("tensors",), "multimodal input is not supported"),
    "return_mm_kwargs": Refused(_OFF, "multimodal input is not supported"),
    "kv_transfer_params": Refused((None, {}), "KV transfer is the router's to arrange, not the client's"),
    "ec_transfer_params": Refused((None,), "encoder-cache transfer is not supported"),
    "vllm_xargs": Refused((None,), "engine extension arguments are not accepted by the router"),
    "repetition_detection": Refused((None,), f"{_NOT_YET}"),
    "stream_interval": Refused((None,), f"{_NOT_YET}"),
    "thinking_token_budget": Refused((None,), f"{_NOT_YET} (reasoning)"),
}
CHAT_REFUSED: dict[str, Refused] = {
    **_SHARED_REFUSED,
    "media_io_kwargs": Refused((None,), "multimodal input is not supported"),
    "mm_processor_kwargs": Refused((None,), "multimodal input is not supported"),
}
COMPLETION_REFUSED: dict[str, Refused] = {
    **_SHARED_REFUSED,
    # vLLM 0.32 renders fill-in-the-middle for DeepSeek-V4 only; for any other model its
    # server gives this 400 (OnlineRenderer.render_completion), with this message.
    "suffix": Refused((None,), "is only supported for models with FIM completion rendering"),
    "prompt_embeds": Refused((None,), "prompt embeddings are not supported"),
}

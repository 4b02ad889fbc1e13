"""The router renders a chat request to the same prompt ids as vLLM's own renderer
(vllm/renderers: ``parse_chat_messages``, ``ChatCompletionRequest.build_chat_params``,
``safe_apply_chat_template``) on the same tokenizer, request by request: message fields,
content parts, template arguments, server and request templates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.api import validate
from router.api.schemas import ChatCompletionRequest
from router.chat import ChatOptions, load_template
from router.tokenizer import Tokenizer
from tests.factories import make_tiny_tokenizer
from tests.helpers.router import make_pool

vllm_chat = pytest.importorskip("vllm.renderers.chat_utils")
vllm_hf = pytest.importorskip("vllm.renderers.hf")
vllm_protocol = pytest.importorskip("vllm.entrypoints.openai.chat_completion.protocol")

HERMES = load_template(str(Path(__file__).resolve().parents[1] / "templates/hermes_tools.jinja"))
PARTS = "{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}[{{ p['text'] }}]{% endfor %}{% endfor %}"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
USER = {"role": "user", "content": "What is the weather in Paris?"}

# (id, request fields, server options)
CASES: list[tuple[str, dict[str, Any], ChatOptions]] = [
    ("plain", {"messages": [USER]}, ChatOptions()),
    ("text_parts", {"messages": [{"role": "critic", "content": [{"type": "text", "text": "a"}, "b"]}]}, ChatOptions()),
    (
        "text_like_parts",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "thinking", "thinking": "hm"}, {"type": "refusal", "refusal": "x"}],
                },
                {
                    "role": "critic",  # a role vLLM's models do not type: any text-like part
                    "content": [
                        {"type": "input_text", "text": "in"},
                        {"type": "output_text", "text": "out"},
                        {"type": "refusal", "refusal": "no"},
                        {"type": "thinking", "thinking": "hm"},
                    ],
                },
            ]
        },
        ChatOptions(),
    ),
    ("name", {"messages": [{**USER, "name": "ann"}]}, ChatOptions(template=HERMES)),
    (
        "system_and_developer",
        {"messages": [{"role": "system", "content": "Be brief."}, USER, {"role": "developer", "content": "French."}]},
        ChatOptions(template=HERMES),
    ),
    (
        "billing_header",
        {"messages": [{"role": "system", "content": "x-anthropic-billing-header: cch=1\nBe brief."}, USER]},
        ChatOptions(template=HERMES),
    ),
    (
        "tool_round_trip",
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning": "Call it."},
                {"role": "tool", "content": [{"type": "text", "text": "18C"}], "tool_call_id": "call_1"},
                {"role": "tool", "content": "sunny", "tool_call_id": "call_2"},
            ],
            "tools": [TOOL],
            "tool_choice": "none",
        },
        ChatOptions(template=HERMES),
    ),
    (
        "bad_arguments_and_empty_calls",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "ok", "tool_calls": []},
            ]
        },
        ChatOptions(template=HERMES),
    ),
    ("no_generation_prompt", {"messages": [USER], "add_generation_prompt": False}, ChatOptions(template=HERMES)),
    (
        "continue_final",
        {
            "messages": [USER, {"role": "assistant", "content": "It is"}],
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
        ChatOptions(template=HERMES),
    ),
    (
        "template_kwargs",
        {"messages": [USER], "chat_template_kwargs": {"enable_thinking": False, "unknown": 1}},
        ChatOptions(template=HERMES),
    ),
    ("reasoning_effort", {"messages": [USER], "reasoning_effort": "none"}, ChatOptions(template=HERMES)),
    ("documents", {"messages": [USER], "documents": [{"title": "t", "text": "x"}]}, ChatOptions(template=HERMES)),
    ("custom_role", {"messages": [{"role": "critic", "content": "hmm"}]}, ChatOptions(template=HERMES)),
    (
        "openai_content_format",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        ChatOptions(template=PARTS),
    ),
    (
        "string_forced",
        {"messages": [{"role": "user", "content": "x"}]},
        ChatOptions(template=PARTS, content_format="string"),
    ),
    (
        "request_template",
        {"messages": [USER], "chat_template": "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor %}"},
        ChatOptions(trust_request_template=True),
    ),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any, Any]]:
    from vllm.config import ModelConfig
    from vllm.tokenizers import get_tokenizer

    path = make_tiny_tokenizer(tmp_path_factory.mktemp("tiny"))
    yield path, ModelConfig(model=str(path), tokenizer=str(path)), get_tokenizer(str(path))


def vllm_ids(body: dict[str, Any], options: ChatOptions, model_config: Any, tok: Any) -> list[int]:
    """What `vllm serve --chat-template <options.template>` renders for ``body``."""
    request = vllm_protocol.ChatCompletionRequest(model="tiny", **body)
    tools = [t.model_dump() for t in request.tools] if request.tools is not None else None
    fmt = vllm_hf.resolve_chat_template_content_format(
        chat_template=request.chat_template or options.template,
        tools=tools,
        given_format=options.content_format,
        tokenizer=tok,
        model_config=model_config,
    )
    params = request.build_chat_params(options.template, options.content_format)
    params = params.with_defaults({"tools": tools, "tokenize": False})
    conversation, _, _ = vllm_chat.parse_chat_messages(request.messages, model_config, content_format=fmt)
    text = vllm_hf.safe_apply_chat_template(model_config, tok, conversation, **params.get_apply_chat_template_kwargs())
    return list(tok(text, add_special_tokens=request.add_special_tokens)["input_ids"])


@pytest.mark.parametrize(("body", "options"), [pytest.param(b, o, id=i) for i, b, o in CASES])
def test_the_router_renders_a_chat_request_as_vllm_does(
    model: tuple[Path, Any, Any], body: dict[str, Any], options: ChatOptions
) -> None:
    path, model_config, tok = model
    ours = validate.chat_prompt_ids(ChatCompletionRequest(**body), make_pool(Tokenizer(path)), options)
    theirs = vllm_ids(body, options, model_config, tok)
    assert tok.decode(ours) == tok.decode(theirs)
    assert ours == theirs

"""Tool calling through P/D on the embedded model, with the official openai SDK (issue #14):
a second router over the session cluster's workers, started as one would start `vllm serve`
for tools (`--chat-template` with tool support, `--tool-call-parser hermes`,
`--enable-auto-tool-choice`). `tool_choice="required"` constrains the output to hermes
`<tool_call>` envelopes (vLLM 0.32's structural tag), and the tool is `strict`, so its
arguments follow its schema: even the 135M model returns a call whose arguments validate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from pdserve.tools.fleet import start_router
from pdserve.tools.procs import Procs
from tests.helpers.cluster import Cluster

pytestmark = pytest.mark.engine

HERMES = Path(__file__).resolve().parents[1] / "templates/hermes_tools.jinja"
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": PARAMETERS,
            "strict": True,
        },
    }
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# One call: the 135M model would go on adding calls to an open list until max_tokens (measured:
# Paris, Lyon, ... then cut off), as it would under vllm serve; parallel_tool_calls=False caps it.
ONE_CALL: dict[str, Any] = {"temperature": 0, "max_tokens": 60, "parallel_tool_calls": False}


@pytest.fixture(scope="module")
def tool_router(cluster: Cluster, default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = ["--chat-template", str(HERMES), "--tool-call-parser", "hermes", "--enable-auto-tool-choice"]
    with Procs(tmp_path_factory.mktemp("tool-router")) as procs:
        router = start_router(procs, default_model, cluster.prefill_addrs, [cluster.decode_addr], args)
        yield router.address


def test_a_required_tool_call_round_trip_through_the_sdk(tool_router: str) -> None:
    client = openai.OpenAI(base_url=f"{tool_router}/v1", api_key="none", max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    asked = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", **ONE_CALL
    )
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, PARAMETERS)  # the constrained call is valid for the tool's schema

    # the same request streamed assembles to the same call
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", **ONE_CALL, stream=True
    )
    name, parts, finish = None, [], None
    for chunk in stream:
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                name = delta.function.name or name if delta.function else name
                parts.append(delta.function.arguments or "" if delta.function else "")
            finish = c.finish_reason or finish
    assert (name, json.loads("".join(parts)), finish) == ("get_weather", arguments, "tool_calls")

    # the tool's answer goes back; the model answers in words
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "clear"})},
    ]
    final = client.chat.completions.create(
        model=model, messages=follow_up, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=16
    )
    answer = final.choices[0]
    assert answer.message.role == "assistant" and answer.message.content and not answer.message.tool_calls
    assert answer.finish_reason in ("stop", "length")

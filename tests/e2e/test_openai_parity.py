"""#13 on the P/D cluster with real vLLM engines: the official SDK's structured-output
helper, regex and choice constraints, logprobs and the sampling fields a client sends."""

from __future__ import annotations

import asyncio
import math
import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel

from router.tokenizer import Tokenizer
from tests.helpers.cluster import Cluster
from tests.helpers.waiting import wait_until
from tests.helpers.workers import engine_load

pytestmark = pytest.mark.engine


class City(BaseModel):
    name: str
    population: int


def sdk(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)


def test_sdk_parse_helper_returns_a_parsed_object(cluster: Cluster) -> None:
    completion = sdk(cluster).chat.completions.parse(
        model=cluster.model,
        messages=[{"role": "user", "content": "Name a city and its population as JSON."}],
        response_format=City,
        max_tokens=60,
        temperature=0,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop", message.content
    assert isinstance(message.parsed, City)


def test_regex_and_choice_constraints_shape_the_text(cluster: Cluster) -> None:
    client = sdk(cluster)
    regex = client.completions.create(
        model=cluster.model,
        prompt="The code is",
        max_tokens=12,
        temperature=0,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}-[A-Z]{2}"}},
    )
    assert re.fullmatch("[0-9]{3}-[A-Z]{2}", regex.choices[0].text), regex.choices[0].text
    choice = client.chat.completions.create(
        model=cluster.model,
        messages=[{"role": "user", "content": "Is the sky green?"}],
        max_tokens=5,
        temperature=0.8,
        seed=1,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
    )
    assert choice.choices[0].message.content in ("yes", "no", "maybe")


def test_logprobs_come_from_the_decode_engine_and_add_up(cluster: Cluster) -> None:
    resp = sdk(cluster).chat.completions.create(
        model=cluster.model,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = resp.choices[0].logprobs.content if resp.choices[0].logprobs else None
    assert content is not None and len(content) == resp.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(c.token for c in content) == resp.choices[0].message.content
    for c in content:
        top = [t.logprob for t in c.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert c.logprob == pytest.approx(top[0])  # greedy: the sampled token is the most likely
        assert math.fsum(math.exp(t) for t in top) <= 1 + 1e-5


def test_penalties_bias_and_bans_change_the_output_as_asked(cluster: Cluster, default_model: Path) -> None:
    def ids(**fields: object) -> list[int]:
        body = {"model": cluster.model, "prompt": "one two one two one two", "max_tokens": 8, "temperature": 0}
        body |= {"return_token_ids": True, "ignore_eos": True, **fields}
        resp = httpx.post(cluster.url + "/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["choices"][0]["token_ids"])

    free = ids()
    assert ids(logit_bias={str(free[0]): -100})[0] != free[0]
    allowed = [free[0] + 1, free[0] + 2]
    assert set(ids(allowed_token_ids=allowed)) <= set(allowed)
    word = Tokenizer(default_model).decode([free[0]]).strip()
    assert (free[0],) in Tokenizer(default_model).bad_words_ids([word])  # the word is that token, spaced or not
    assert free[0] not in ids(bad_words=[word])
    assert ids(repetition_penalty=1.8) != free  # the prompt repeats what greedy decoding would repeat


def test_n_choices_move_the_prompt_kv_once_and_match_seeded_single_requests(cluster: Cluster) -> None:
    """One prefill, one KV transfer for n=4; choice i is the request with seed s + i."""
    body = {"model": cluster.model, "prompt": "A list of unusual fruit: kiwano, rambutan,", "max_tokens": 8}
    body |= {"temperature": 0.9, "seed": 41, "return_token_ids": True}
    before = asyncio.run(engine_load(cluster.decode_addr, "decode")).kv.transfers
    resp = httpx.post(cluster.url + "/v1/completions", json={**body, "n": 4}, timeout=300)
    assert resp.status_code == 200, resp.text

    def transfers() -> int:
        return asyncio.run(engine_load(cluster.decode_addr, "decode")).kv.transfers

    # The counter lands with the engine's next stats refresh, after the response.
    wait_until(lambda: True if transfers() > before else None, "the KV pull counted", timeout_s=30)
    time.sleep(1.0)  # any later pull would have been counted by now too
    assert transfers() - before == 1
    choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
    assert resp.json()["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in choices)
    for i, choice in enumerate(choices):
        alone = httpx.post(cluster.url + "/v1/completions", json={**body, "seed": 41 + i}, timeout=300).json()
        assert choice["token_ids"] == alone["choices"][0]["token_ids"], i


def test_n_4_moves_as_many_kv_bytes_as_n_1(cluster: Cluster) -> None:
    """The decode worker's KV-transfer bytes for one n=4 request equal those for one n=1
    request of the same length (two fresh prompts: nothing of either is cached yet)."""

    def moved(prompt: list[int], n: int) -> tuple[int, int]:
        load = asyncio.run(engine_load(cluster.decode_addr, "decode")).kv
        body = {"model": cluster.model, "prompt": prompt, "max_tokens": 4, "n": n, "temperature": 0.8, "seed": 5}
        assert httpx.post(cluster.url + "/v1/completions", json=body, timeout=300).status_code == 200

        def counted() -> tuple[int, int] | None:
            now = asyncio.run(engine_load(cluster.decode_addr, "decode")).kv
            return (now.transfers - load.transfers, now.bytes - load.bytes) if now.transfers > load.transfers else None

        wait_until(counted, "the KV pull counted", timeout_s=30)
        time.sleep(1.0)  # any later pull would have been counted by now too
        return counted() or (0, 0)

    length = 300  # more than two 128-token blocks
    one = moved([1000 + (i * 37) % 20000 for i in range(length)], 1)
    four = moved([2000 + (i * 53) % 20000 for i in range(length)], 4)
    assert one[0] == four[0] == 1
    assert one[1] == four[1] > 0, (one, four)

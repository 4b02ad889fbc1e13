"""``usage.completion_tokens_details.reasoning_tokens`` as vLLM counts it: the router's
count (router/parsers/reasoning.py ``reasoning_tokens``) against vLLM 0.32's own ``qwen3``
parser engine on the default model's tokenizer, for the recorded outputs of the reasoning
parser tests; and vLLM's ``deepseek_r1`` rule (tokens between the output's own tags)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.parsers import reasoning
from tests.unit.test_parsers_reasoning import CASES

vllm_tokenizers = pytest.importorskip("vllm.tokenizers")
vllm_qwen3 = pytest.importorskip("vllm.parser.qwen3")

QWEN3_TEXTS = sorted({text for name, text, *_ in CASES if name == "qwen3"} | {"ü", "思考🎉</think>答え", "a</think>"})


@pytest.fixture(scope="module")
def tokenizer(default_model: Path):
    return vllm_tokenizers.get_tokenizer(str(default_model))


@pytest.mark.parametrize("text", QWEN3_TEXTS)
def test_qwen3_reasoning_tokens_are_counted_as_vllm_counts_them(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    vllm_parser = vllm_qwen3.Qwen3Parser(tokenizer)
    vllm_parser._single_pass_parse(text, ids)  # what vLLM's chat server runs on a whole output
    expected = vllm_parser.count_reasoning_tokens(ids)
    texts = [tokenizer.decode([t]) for t in ids]
    assert reasoning.qwen3().reasoning_tokens(text, texts) == expected


def test_the_corpus_has_reasoning_to_count(tokenizer) -> None:
    """Not every case counts 0 (a comparison of zeros would show nothing)."""
    text = "<think>\nLet me reason.\n</think>\n\nParis."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert reasoning.qwen3().reasoning_tokens(text, [tokenizer.decode([t]) for t in ids]) >= 4


def test_deepseek_r1_counts_tokens_between_the_outputs_own_tags() -> None:
    """vLLM's rule (reasoning/basic_parsers.py ``count_reasoning_tokens``), over tokens whose
    text is a whole tag, as the parser requires: reasoning the prompt opened counts 0."""
    parser = reasoning.deepseek_r1()
    assert parser.reasoning_tokens("", ["<think>", "a", "b", "</think>", "c"]) == 2
    assert parser.reasoning_tokens("", ["a", "b", "</think>", "c"]) == 0
    assert parser.reasoning_tokens("", ["<think>", "<think>", "a", "</think>", "b", "</think>", "c"]) == 2

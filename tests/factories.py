"""Test factories: a tiny random Llama with a byte-level tokenizer, built in a temp dir.

Fast to load (no weights to read), real enough for vLLM: head dim 32 (the CPU
backend rejects 16), a chat template, EOS id 0.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def metric_samples(text: str) -> dict[MetricKey, float]:
    """Prometheus exposition text → {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "bos_token_id": 1,
    "eos_token_id": 0,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
}


def make_tiny_tokenizer(path: Path) -> Path:
    """Write the tiny Llama's byte-level tokenizer, config and generation config into
    ``path``, without weights: all the router reads from a model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|im_end|>", "<|im_start|>"]
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(byte_alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>")
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.save_pretrained(path)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": len(vocab), **TINY_LLAMA}
    (path / "config.json").write_text(json.dumps(config))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 1}))
    return path


def make_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """``make_tiny_tokenizer`` plus random weights: a 2-layer Llama vLLM can serve."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    make_tiny_tokenizer(path)
    config = LlamaConfig.from_pretrained(path)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 1}))
    return path

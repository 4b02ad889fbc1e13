"""A model directory with a config.json shape AND a tokenizer, for chat requests on dummy weights.

Usage: python3 deploy/gpu/tokenized_shape.py deploy/gpu/llama-3.1-8b-shape OUT_DIR

The shape directories hold only config.json (random weights via load_format=dummy), so the
router can serve them token ids only. /v1/chat/completions needs a tokenizer and a chat
template: this writes a byte-level BPE tokenizer (no merges: one token per byte) padded to the
config's vocab_size with plain filler tokens ("t<id>"), so every id a dummy-weight model
samples decodes to text; <|begin_of_text|> and <|eot_id|> sit at Llama 3's ids (bos, eos).
Needs only `tokenizers` and `transformers` (present on the GPU machines).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
SPECIALS = {"<|begin_of_text|>": 128000, "<|eot_id|>": 128009}


def main(src: Path, dst: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    size = int(json.loads((src / "config.json").read_text())["vocab_size"])
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    taken = set(SPECIALS.values())
    vocab |= {f"t{i}": i for i in range(len(vocab), size) if i not in taken}
    vocab |= SPECIALS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    fast.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dst)
    (dst / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128009}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

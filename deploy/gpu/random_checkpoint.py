"""A random-weight checkpoint in a shape directory's architecture, saved as safetensors.

Usage: python3 deploy/gpu/random_checkpoint.py SHAPE_DIR OUT_DIR [--layers N] [--seed S]

Why not load_format=dummy: vLLM's dummy loader fills each parameter from a fixed seed by
its element count (vllm/model_executor/model_loader/weight_utils.py,
initialize_dummy_weights, 0.26), so a TP=2 shard holds the first half of a half-size draw:
a TP=2 engine and a TP=1 engine then serve DIFFERENT models and their greedy outputs
cannot be compared. Weights from a file are the same model at any TP. Built on the GPU
when there is one (an 8-layer Llama-3.1-8B shape: 2.8 B parameters, 5.6 GB in bf16).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=0, help="num_hidden_layers (0: the shape's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((args.shape / "config.json").read_text())
    if args.layers:
        config["num_hidden_layers"] = args.layers
    began = time.monotonic()
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config)).to(dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "dtype": str(dtype), "device": device, "s": time.monotonic() - began}))


if __name__ == "__main__":
    main()

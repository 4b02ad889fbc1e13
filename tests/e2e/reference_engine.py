"""Greedy reference outputs from ONE colocated vLLM engine (no connector, no pdserve code).

Usage: python reference_engine.py IN.json OUT.json
IN: {"model": dir, "prompts": [[ids]...], "max_tokens": n, "stop_token_ids": [...],
     "block_size": n, "max_model_len": n, "dtype": str}. OUT: {"outputs": [[ids]...]}.
Engine settings mirror the workers' defaults (pdserve/engine/config.py).
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from pdserve.lifetime import die_with_parent

    die_with_parent()  # vLLM's engine core goes with us: kill_descendants
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.load(open(sys.argv[1]))
    llm = LLM(
        model=spec["model"],
        skip_tokenizer_init=True,
        block_size=spec["block_size"],
        max_model_len=spec["max_model_len"],
        kv_cache_memory_bytes=1 << 30,
        dtype=spec["dtype"],
        enforce_eager=True,
        enable_prefix_caching=True,
    )
    params = SamplingParams(
        temperature=0, max_tokens=spec["max_tokens"], stop_token_ids=spec["stop_token_ids"], detokenize=False
    )
    outputs = []
    for ids in spec["prompts"]:  # one at a time: batching must not be what makes outputs equal
        (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        outputs.append(list(out.outputs[0].token_ids))
    json.dump({"outputs": outputs}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()

"""How fast does NIXL move KV between two engines on ONE GPU, and over which UCX path?

Issue #16 item 3: on one H200, two processes (prefill and decode engines) moved KV over UCX
"software emulation | tcp/lo" at 0.4 GB/s. This script starts a producer and a consumer
vLLM engine (NixlConnector, each its own engine-core process) on the same device, moves the
KV of fresh prompts from one to the other, and reports bytes, seconds and GB/s per transfer,
against the consumer prefilling the same length itself and a plain device copy.

    python3 deploy/gpu/kv_path.py VARIANT OUT_JSON [PROMPT_TOKENS]

VARIANT: ``default`` (KV buffers on the GPU), ``host`` (``kv_buffer_device=cpu``: KV staged
in pinned host memory), ``ucx-none`` (the default with NIXL's UCX backend created with
``ucx_error_handling_mode=none``, as ``--kv-ucx-error-handling none`` does through
pdserve.engine.vllm_worker_ext), or ``env:NAME=VALUE,...`` (the default with UCX environment
variables, e.g. ``env:UCX_TLS=cuda_ipc,cuda_copy,self,sm``). Run after deploy/gpu/install.sh.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

# A Llama-3.2-1B shape: 16 layers x 8 KV heads x 64 dims x 2 (K, V) x 2 bytes = 32 KiB a token.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
KV_BYTES_PER_TOKEN = 16 * 8 * 64 * 2 * 2


def device_copy_gb_s() -> float:
    import torch

    nbytes = 1 << 30
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 10 * nbytes / (time.perf_counter() - start) / 1e9


async def main() -> None:
    variant, out = sys.argv[1], Path(sys.argv[2])
    prompt_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 3072
    if variant.startswith("env:"):  # NAME=VALUE,...; a part without "=" continues the value before
        name = ""
        for item in variant[4:].split(","):
            if "=" in item:
                name, _, value = item.partition("=")
                os.environ[name] = value
            elif name:
                os.environ[name] += "," + item
    if variant == "ucx-none":
        os.environ["PDSERVE_UCX_ERROR_HANDLING"] = "none"  # vllm_worker_ext.UCX_ERROR_HANDLING_ENV
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")

    from vllm import SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    model = Path(tempfile.mkdtemp()) / "llama-3.2-1b-shape"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))

    extension = (
        {"worker_extension_cls": "pdserve.engine.vllm_worker_ext.NixlIdleExtension"} if variant == "ucx-none" else {}
    )

    def start(role: str, port: int) -> AsyncLLM:
        os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(port)
        os.environ["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
        kv = KVTransferConfig(
            kv_connector="NixlConnector",
            kv_role=role,
            kv_buffer_device="cpu" if variant == "host" else "cuda",
        )
        args = AsyncEngineArgs(
            model=str(model),
            load_format="dummy",
            skip_tokenizer_init=True,
            dtype="bfloat16",
            max_model_len=8192,
            block_size=16,
            gpu_memory_utilization=0.3,
            enforce_eager=True,
            enable_prefix_caching=True,
            kv_transfer_config=kv,
            **extension,
        )
        return AsyncLLM.from_engine_args(args)

    began = time.perf_counter()
    producer = start("kv_producer", 5600)
    consumer = start("kv_consumer", 5601)
    up_s = time.perf_counter() - began

    async def run(engine: AsyncLLM, ids: list[int], extra: dict | None) -> tuple[float, object]:
        params = SamplingParams(max_tokens=1, temperature=0, extra_args=extra)
        start_t, last = time.perf_counter(), None
        async for output in engine.generate({"prompt_token_ids": ids}, params, str(uuid.uuid4())):
            last = output
        return time.perf_counter() - start_t, last

    rows = []
    rng = random.Random(0)
    for i in range(6):
        ids = [rng.randrange(1000, 100000) for _ in range(prompt_tokens)]
        prefill_s, done = await run(producer, ids, {"kv_transfer_params": {"do_remote_decode": True}})
        params = getattr(done, "kv_transfer_params", None)
        pulled_s, _ = await run(consumer, ids, {"kv_transfer_params": params})
        local_ids = [rng.randrange(1000, 100000) for _ in range(prompt_tokens)]
        local_s, _ = await run(consumer, local_ids, None)
        nbytes = prompt_tokens * KV_BYTES_PER_TOKEN
        rows.append(
            {
                "i": i,
                "prefill_s": prefill_s,
                "decode_with_pull_s": pulled_s,
                "decode_local_prefill_s": local_s,
                "kv_bytes": nbytes,
                "gb_per_s_lower_bound": nbytes / pulled_s / 1e9,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "variant": variant,
        "prompt_tokens": prompt_tokens,
        "engines_up_s": up_s,
        "rows": rows,
        "device_copy_gb_s": device_copy_gb_s(),
        "ucx_env": {k: v for k, v in os.environ.items() if k.startswith("UCX_")},
    }
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    producer.shutdown()
    consumer.shutdown()


if __name__ == "__main__":
    asyncio.run(main())

"""Router CPU per request, in-process with scripted workers (TestClient): completions and chat."""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.router import ScriptedDecode, ScriptedPrefill, scripted_router, tiny_tokenizer

tok = tiny_tokenizer(Path(tempfile.mkdtemp()))
decode = ScriptedDecode(tok.encode("hello world and more")[-6:])
r = scripted_router(tok, [ScriptedPrefill(kv={"remote_block_ids": [[1]]})], [decode])
bodies = {
    "cmpl": ("/v1/completions", {"model": "tiny", "prompt": "x" * 56, "max_tokens": 8}),
    "chat": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 8},
    ),
    "cmpl_stream": ("/v1/completions", {"model": "tiny", "prompt": "x" * 56, "max_tokens": 8, "stream": True}),
}
out = {}
for name, (path, body) in bodies.items():
    for _ in range(50):
        r.client.post(path, json=body)
    times = []
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter()
        resp = r.client.post(path, json=body)
        times.append(time.perf_counter() - t)
        assert resp.status_code == 200
    out[name] = statistics.median(times) * 1000
print(" ".join(f"{k}={v:.3f}ms" for k, v in out.items()))

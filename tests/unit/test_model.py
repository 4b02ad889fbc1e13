"""The embedded default model: what the converted directory must hold, and how the cache behaves.

The directory tests use the real default cache: the first run converts (~40 s on 2 cores),
later runs find it done. The cache-mechanics tests swap the conversion for a stub.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pdserve.tools import model
from pdserve.tools.model import MARKER_FILE, default_model_dir, find_gguf, read_gguf_facts

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _prompt_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    # transformers 5 returns a BatchEncoding here, 4.x a plain list.
    return list(ids if isinstance(ids, list) else ids["input_ids"])


def test_digits_become_one_token_each(tokenizer: Any) -> None:
    text = "Call 12345 now"
    ids = tokenizer(text)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[2:7] == ["1", "2", "3", "4", "5"]
    assert tokenizer.decode(ids) == text


def test_chat_template_ends_with_assistant_prompt(model_dir: Path, tokenizer: Any) -> None:
    assert _json(model_dir / "tokenizer_config.json")["chat_template"]
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert _prompt_ids(tokenizer)[0] == 1  # the template's own <|im_start|>, no extra BOS


def test_special_token_ids_match_gguf(model_dir: Path, tokenizer: Any) -> None:
    facts = read_gguf_facts(find_gguf())
    assert (facts.bos_token_id, facts.eos_token_id) == (1, 2)
    assert tokenizer.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert _json(model_dir / "generation_config.json")["eos_token_id"] == 2


def test_config_carries_rope_theta_from_gguf(model_dir: Path) -> None:
    config = _json(model_dir / "config.json")
    assert config["rope_theta"] == read_gguf_facts(find_gguf()).rope_theta == 100000.0
    assert config["tie_word_embeddings"] is True


def test_tokenizer_class_is_known_to_transformers_4(model_dir: Path) -> None:
    assert _json(model_dir / "tokenizer_config.json")["tokenizer_class"] == "GPT2Tokenizer"
    # A jinja file would shadow the template in tokenizer_config.json on transformers 5.
    assert not (model_dir / "chat_template.jinja").exists()


def test_greedy_answer_is_sensible(model_dir: Path, tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    lm: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = _prompt_ids(tokenizer)
    out = lm.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    new = out[0, len(prompt) :].tolist()
    assert tokenizer.decode(new, skip_special_tokens=True) == "The capital of France is Paris."
    assert new[-1] == 2  # stopped on <|im_end|>


def test_second_call_returns_fast_without_rewriting(model_dir: Path) -> None:
    before = (model_dir / MARKER_FILE).stat().st_mtime_ns
    start = time.monotonic()
    assert default_model_dir() == model_dir
    assert time.monotonic() - start < 1.0
    assert (model_dir / MARKER_FILE).stat().st_mtime_ns == before


class _StubConversion:
    """Stands in for convert_gguf: records calls, and is slow enough for callers to overlap."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, gguf: Path, out_dir: Path) -> None:
        self.calls += 1
        (out_dir / "config.json").write_text("{}")
        time.sleep(0.2)
        if self.fail:
            raise RuntimeError("conversion failed")
        (out_dir / MARKER_FILE).write_text("stub\n")


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> _StubConversion:
    conversion = _StubConversion()
    monkeypatch.setattr(model, "convert_gguf", conversion)
    return conversion


def test_concurrent_callers_convert_once(tmp_path: Path, stub: _StubConversion) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(default_model_dir(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stub.calls == 1
    assert len(results) == 3 and len(set(results)) == 1
    assert (results[0] / MARKER_FILE).is_file()


def test_leftovers_of_a_killed_run_are_replaced(tmp_path: Path, stub: _StubConversion, model_dir: Path) -> None:
    models = tmp_path / "models"
    half = models / model_dir.name  # a directory without the marker was never finished
    stale = models / f".{model_dir.name}.tmp-dead"
    half.mkdir(parents=True)
    stale.mkdir()
    assert default_model_dir(tmp_path) == half
    assert (half / MARKER_FILE).is_file() and not stale.exists()
    assert stub.calls == 1


def test_failed_conversion_leaves_nothing(tmp_path: Path, stub: _StubConversion) -> None:
    stub.fail = True
    with pytest.raises(RuntimeError, match="conversion failed"):
        default_model_dir(tmp_path)
    assert [p.suffix for p in (tmp_path / "models").iterdir()] == [".lock"]


def test_service_command_lines_get_the_default_model_only_when_none_is_named(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PDSERVE_MODEL", raising=False)
    monkeypatch.delenv("PDSERVE_SERVED_MODEL_NAME", raising=False)
    argv = ["--port", "1"]
    assert model.with_default_model(argv, served_name=True) == [
        "--model",
        str(model_dir),
        "--served-model-name",
        model.MODEL_NAME,
        *argv,
    ]
    assert model.with_default_model(argv, served_name=False) == ["--model", str(model_dir), *argv]
    assert model.with_default_model(["--served-model-name", "x"], served_name=True)[:2] == ["--model", str(model_dir)]
    for named in (["--model", "/m"], ["--model=/m"], ["--help"], ["-h"]):
        assert model.with_default_model(named, served_name=True) == named
    monkeypatch.setenv("PDSERVE_MODEL", "/m")
    assert model.with_default_model(argv, served_name=True) == argv

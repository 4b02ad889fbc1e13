"""Engine registry: implementations are named here and imported lazily.

Adding an engine: implement ``PrefillEngine`` / ``DecodeEngine`` (see base.py) and
register its classes below; tests/contract/test_engine.py then runs the contract suite
against it (every registered name is a parameter of that suite).
"""

from __future__ import annotations

import importlib
from typing import Any

from pdserve.engine.base import DecodeEngine, PrefillEngine
from pdserve.engine.config import EngineConfig

# name → (prefill class, decode class), as "module:attr" so nothing heavy loads early.
_REGISTRY: dict[str, tuple[str, str]] = {
    "vllm": ("pdserve.engine.vllm_engine:VllmPrefillEngine", "pdserve.engine.vllm_engine:VllmDecodeEngine"),
    "sim": ("pdserve.engine.sim.engine:SimPrefillEngine", "pdserve.engine.sim.engine:SimDecodeEngine"),
}


def engine_names() -> list[str]:
    return sorted(_REGISTRY)


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry(name: str) -> tuple[str, str]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"engine: unknown engine {name!r}; choose one of {engine_names()}") from None


def make_prefill_engine(config: EngineConfig) -> PrefillEngine:
    cls = _load(_entry(config.engine)[0])
    engine: PrefillEngine = cls(config)
    return engine


def make_decode_engine(config: EngineConfig) -> DecodeEngine:
    cls = _load(_entry(config.engine)[1])
    engine: DecodeEngine = cls(config)
    return engine

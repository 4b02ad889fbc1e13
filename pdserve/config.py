"""Config pieces shared by every service: model directories, logging, the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def model_path(model: str) -> str:
    """An HF model directory, absolute. The runtime never converts a model (that is
    tooling: ``pdserve up`` passes the converted default), so none given is an error."""
    if not model:
        raise ValueError("required: give --model (an HF model directory)")
    path = Path(model).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not an HF model directory (no config.json)")
    return str(path)


def has_tokenizer(model_dir: str | Path) -> bool:
    """Whether a model directory ships a tokenizer (a ``load_format=dummy`` benchmark model
    may not): the router then detokenizes and the engines compile grammars with it."""
    path = Path(model_dir)
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def resolve_model(model: str, served_model_name: str) -> tuple[Path, str]:
    """The model directory and the name clients use (default: the directory's name)."""
    try:
        path = Path(model_path(model))
    except ValueError as exc:
        raise ValueError(f"model: {exc}") from None
    return path, served_model_name or path.name


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run a service's main coroutine on uvloop when it is installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (not on Windows)
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)

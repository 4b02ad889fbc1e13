"""The router runs uvicorn on httptools (a dependency) and says so when it cannot (on the GPU
test hosts it is absent, and uvicorn alone would fall back to h11 without a word)."""

from __future__ import annotations

import logging
import sys

import pytest

from router.server import http_parser


def test_httptools_when_installed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="router"):
        assert http_parser() == "httptools"
    assert not caplog.records


def test_h11_said_loudly_when_httptools_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "httptools", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="router"):
        assert http_parser() == "h11"
    assert "httptools is not installed" in caplog.text

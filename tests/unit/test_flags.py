"""pdserve.flags: one dataclass field gives a flag its default, env fallback and help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pdserve.flags import Flag, add_flags, build, flag, group, parse_bool


@dataclass(frozen=True)
class Inner:
    port: int = flag(7000, env="T_PORT", help="port to listen on")
    ratio: float = flag(0.5, env="T_RATIO", help="a fraction")
    lease_s: int | None = flag(None, env="T_LEASE", help="optional seconds")


@dataclass(frozen=True)
class Foreign:  # declared elsewhere, without flag metadata
    limit: int = 512
    hidden: float = 1.0

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError("limit must be ≥ 0")


@dataclass(frozen=True)
class Outer:
    name: str = flag(env="T_NAME", help="required name")
    eager: bool = flag(True, name="--no-eager", env="T_EAGER", negate=True, help="turn eager off")
    verbose: bool = flag(False, env="T_VERBOSE", help="talk more")
    hosts: tuple[str, ...] = flag((), env="T_HOSTS", repeat=True, metavar="HOST:PORT", help="hosts")
    path: Path = flag(Path("/tmp"), env="T_PATH", help="a path")
    mode: str = flag("a", env="T_MODE", choices=("a", "b"), help="a mode")
    inner: Inner = group("inner", default_factory=Inner)
    foreign: Foreign = group(
        "foreign", Foreign, default_factory=Foreign, limit=Flag(name="--max-limit", env="T_LIMIT", help="a limit")
    )
    derived: tuple[str, ...] = field(default=())  # not a flag


def parse(argv: list[str], defaults: dict | None = None) -> Outer:
    p = argparse.ArgumentParser(prog="t")
    add_flags(p, Outer, defaults)
    return build(Outer, p.parse_args(argv), defaults)


def help_text(defaults: dict | None = None) -> str:
    p = argparse.ArgumentParser(prog="t")
    add_flags(p, Outer, defaults)
    return " ".join(p.format_help().split())


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAME", "EAGER", "VERBOSE", "HOSTS", "PATH", "MODE", "PORT", "RATIO", "LEASE", "LIMIT"):
        monkeypatch.delenv(f"T_{name}", raising=False)


def test_defaults_flags_and_types() -> None:
    cfg = parse(["--name", "x"])
    assert cfg == Outer(name="x")
    assert cfg.inner == Inner() and cfg.foreign == Foreign()
    cfg = parse(["--name", "x", "--port", "1", "--ratio", "0.25", "--lease-s", "9", "--max-limit", "3"])
    assert (cfg.inner.port, cfg.inner.ratio, cfg.inner.lease_s, cfg.foreign.limit) == (1, 0.25, 9, 3)
    assert cfg.foreign.hidden == 1.0  # a foreign field without a flag keeps its own default
    assert parse(["--name", "x", "--path", "/srv"]).path == Path("/srv")


def test_help_shows_env_and_default_of_every_flag() -> None:
    text = help_text()
    assert "port to listen on [T_PORT; default: 7000]" in text
    assert "a fraction [T_RATIO; default: 0.5]" in text
    assert "optional seconds [T_LEASE; default: none]" in text
    assert "required name [T_NAME; required]" in text
    assert "turn eager off [T_EAGER=0; default: off]" in text
    assert "a limit [T_LIMIT; default: 512]" in text  # the foreign class's own default
    assert "--mode {a,b}" in text and "--hosts HOST:PORT" in text and "--port PORT" in text
    assert "inner:" in text and "foreign:" in text  # groups


def test_env_fallback_and_flag_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_NAME", "from-env")
    monkeypatch.setenv("T_PORT", "8001")
    monkeypatch.setenv("T_HOSTS", "a:1, b:2")
    monkeypatch.setenv("T_LIMIT", "5")
    cfg = parse([])
    assert (cfg.name, cfg.inner.port, cfg.hosts, cfg.foreign.limit) == ("from-env", 8001, ("a:1", "b:2"), 5)
    cfg = parse(["--port", "9", "--hosts", "c:3,d:4", "--hosts", "e:5"])
    assert cfg.inner.port == 9 and cfg.hosts == ("c:3", "d:4", "e:5")


def test_per_role_defaults_show_in_help_and_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    role = {"inner.port": 50052, "foreign.limit": 64}
    assert "[T_PORT; default: 50052]" in help_text(role) and "[T_LIMIT; default: 64]" in help_text(role)
    cfg = parse(["--name", "x"], role)
    assert cfg.inner.port == 50052 and cfg.foreign.limit == 64
    monkeypatch.setenv("T_PORT", "1")  # the environment still beats a role's default
    assert parse(["--name", "x"], role).inner.port == 1


@pytest.mark.parametrize(
    "argv,env,match",
    [
        (["--port", "x"], {}, r"^port \(--port\): invalid int value 'x'"),
        ([], {"T_RATIO": "half"}, r"^ratio \(T_RATIO\): invalid float value 'half'"),
        ([], {"T_MODE": "c"}, r"^mode \(T_MODE\): 'c' is not one of \['a', 'b'\]"),
        ([], {"T_VERBOSE": "maybe"}, r"^verbose \(T_VERBOSE\): expected one of"),
        (["--max-limit", "-1"], {}, r"limit must be ≥ 0"),  # the dataclass's own check
    ],
)
def test_a_bad_value_names_the_field_and_where_it_came_from(
    argv: list[str], env: dict[str, str], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        parse(["--name", "x", *argv])


def test_a_missing_required_flag_names_flag_and_variable() -> None:
    with pytest.raises(ValueError, match=r"^name: required: give --name or set T_NAME"):
        parse([])


def test_bools_parse_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in ("1", "true", "Yes", "on"):
        assert parse_bool(raw) is True
    for raw in ("0", "false", "NO", "off"):
        assert parse_bool(raw) is False
    for raw in ("", "2", "enabled", "t"):
        with pytest.raises(ValueError):
            parse_bool(raw)
    assert parse(["--name", "x"]).eager is True
    assert parse(["--name", "x", "--no-eager"]).eager is False
    assert parse(["--name", "x", "--verbose"]).verbose is True
    monkeypatch.setenv("T_EAGER", "0")
    assert parse(["--name", "x"]).eager is False
    monkeypatch.setenv("T_EAGER", "1")
    assert parse(["--name", "x"]).eager is True


def test_optional_values_take_empty_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_LEASE", "")
    assert parse(["--name", "x"]).inner.lease_s is None
    assert parse(["--name", "x", "--lease-s", "3"]).inner.lease_s == 3


def test_a_field_without_a_flag_is_not_an_option() -> None:
    assert "--derived" not in help_text() and "--hidden" not in help_text()


def test_a_default_for_a_field_that_is_no_flag_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match=r"inner\.prot"):
        parse(["--name", "x"], {"inner.prot": 1})

"""The one port layout of ``pdserve up`` (pdserve.tools.ports): what the children are
given is what is checked before they start, and launchers' flags parse back to it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pdserve.flags import build
from pdserve.tools.ports import UpPorts, free_runs
from pdserve.tools.up import UpConfig, add_up_parser, commands


def _flag_ports(argv: list[str]) -> set[int]:
    flags = ("--port", "--kv-port", "--kv-events-port", "--metrics-port")
    return {int(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in flags}


@pytest.mark.parametrize("layout", [UpPorts(), UpPorts(prefill_workers=3), UpPorts(colocated=True, prefill_workers=0)])
def test_every_port_a_child_gets_is_checked_once(layout: UpPorts) -> None:
    cfg = UpConfig(model="/m", served_model_name="m", **dataclasses.asdict(layout))
    checked = [port for _, _, port in cfg.ports()]
    assert len(checked) == len(set(checked))  # no two processes share a port
    given = set().union(*(_flag_ports(argv) for _, argv in commands(cfg)))
    replays = {port + 1 for what, _, port in cfg.ports() if what.endswith("KV events")}
    unused = {cfg.decode().kv} if cfg.colocated else set()  # a colocated decode worker opens no NIXL port
    assert given | replays == set(checked) | unused
    assert len(commands(cfg)) == layout.prefill_workers + 2


def test_free_ports_parse_back_through_up_flags_to_the_same_layout() -> None:
    ports = UpPorts.free(prefill_workers=2)
    parser = argparse.ArgumentParser()
    add_up_parser(parser.add_subparsers())
    args = parser.parse_args(["up", *ports.up_args()])
    got = build(UpPorts, args)
    assert got == ports
    checked = [port for _, _, port in ports.ports()]
    assert len(checked) == len(set(checked))


def test_free_runs_do_not_overlap() -> None:
    spans = [1, 2, 4, 8, 2]
    starts = free_runs(*spans)
    taken = [p for start, span in zip(starts, spans, strict=True) for p in range(start, start + span)]
    assert len(taken) == len(set(taken))

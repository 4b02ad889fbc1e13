"""Keep torch out of a router process.

The router needs no torch (the router image has none), but where torch is installed, as in
the all-in-one venv of ``pdserve up`` and the tests, transformers' ``AutoTokenizer`` imports
it through its config machinery: ~2.5 s of start-up CPU and ~400 MiB in every router process
(docs/BENCHMARKS.md §10g). ``None`` in ``sys.modules`` makes importlib report torch absent
and ``import torch`` fail, as in that image. Each router entry point calls ``keep_torch_out``
before it imports ``router.server`` (which reaches transformers): ``python -m router`` and
each ``--workers`` child, which multiprocessing starts without running a package's __main__.
"""

from __future__ import annotations

import sys


def keep_torch_out() -> None:
    """Block torch in this process, unless it is already imported."""
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]

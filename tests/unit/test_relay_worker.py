"""arq is extended by subclass, never patched: no module of the product assigns to arq, and every method
RelayWorker overrides is one arq's Worker has and still calls (an arq that renamed one would silently skip it)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from arq.worker import Worker

from worker.relay import RelayWorker

ROOT = Path(__file__).resolve().parents[2]
# The same pattern as the review hook's: an assignment to arq's module or Worker class, or a setattr on them.
PATCH = re.compile(r"^\s*(arq\.worker\.\w+|Worker\.\w+)\s*=|setattr\((arq|Worker)", re.MULTILINE)


def test_no_product_module_patches_arq() -> None:
    patching = [
        str(path.relative_to(ROOT))
        for package in ("api", "worker", "shared", "cli")
        for path in (ROOT / package).rglob("*.py")
        if PATCH.search(path.read_text())
    ]
    assert patching == []


def test_the_pattern_finds_a_patch() -> None:
    assert PATCH.search("import arq\narq.worker.poll = wakeable_poll\n")
    assert PATCH.search("    Worker._poll_iteration = wrapped\n")
    assert PATCH.search("setattr(Worker, 'start_jobs', start_jobs)")
    assert not PATCH.search("class RelayWorker(Worker):\n    poll_delay = 5\n")


def test_every_override_is_a_method_arq_defines_with_the_same_parameters() -> None:
    own = {"__init__", "_deps", "_take", "_finished", "_give_back_slot", "_listen"}
    overrides = {name for name, value in vars(RelayWorker).items() if callable(value) and name not in own}
    assert overrides == {"_poll_iteration", "start_jobs", "close"}
    for name in overrides:
        ours, arqs = (inspect.signature(getattr(cls, name)).parameters for cls in (RelayWorker, Worker))
        assert list(ours) == list(arqs), name


def test_arq_still_calls_the_overridden_methods() -> None:
    # Worker.main runs the poll iteration, which starts the jobs it found; Worker.run closes the worker.
    assert "self._poll_iteration()" in inspect.getsource(Worker.main)
    assert "self.start_jobs(" in inspect.getsource(Worker._poll_iteration)
    assert "self.close()" in inspect.getsource(Worker.run)

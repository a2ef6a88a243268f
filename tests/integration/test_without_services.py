"""`make test` on a machine with no Redis and no PostgreSQL: the tests start embedded real servers themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cli.embedded_redis import free_port
from tests.support.stack import ROOT

# A small subset of the parts that need both servers: the whole flow with PostgreSQL as the store (real API and
# worker processes), and some of the store's own tests on it (migrations, concurrent claims).
SUBSET = [
    "tests/integration/test_postgres_stack.py",
    "tests/integration/test_store.py",
    "-k", "test_postgres_stack or (postgresql and (upgrade or migrations or concurrent_claims))",
]  # fmt: skip


@pytest.mark.timeout(600)
def test_database_tests_pass_when_nothing_listens_at_the_configured_servers(tmp_path: Path) -> None:
    redis_port, postgres_port = free_port(), free_port()
    # Not under tmp_path: the embedded PostgreSQL runs as another user, who must traverse every parent directory,
    # and pytest keeps its own temporary root private (0700).
    scratch = Path(tempfile.mkdtemp(prefix="sse-relay-test-tmp-"))
    try:
        _run_subset(redis_port, postgres_port, scratch, tmp_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_subset(redis_port: int, postgres_port: int, scratch: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}",
        TEST_POSTGRES_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{postgres_port}/test",
        TMPDIR=str(scratch),  # where the embedded servers' directories go: checked below
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner"),
         *SUBSET],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert " passed" in output and "skipped" not in output, output[-2000:]
    leftovers = [p.name for p in scratch.iterdir() if p.name.startswith("sse-relay-")]
    assert not leftovers, f"the embedded servers' directories were not removed: {leftovers}"

"""`sse-relay dev` (what `make run` starts): the port it takes, a taken port, and a clean exit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import free_port
from tests.support.stack import _SCRUB, Process, wait_for


def _env(scratch: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*_SCRUB, "DEMO_MODEL_PORT")}
    env.update(TMPDIR=str(scratch), PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture
def scratch() -> Iterator[Path]:
    # A private temporary root for the child: whatever it leaves there is visible.
    path = Path(tempfile.mkdtemp(prefix="sse-relay-test-tmp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _two_free_ports() -> int:
    """A port whose next port is free too (the demo model's)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def test_a_taken_port_is_a_clear_message_not_a_traceback(tmp_path: Path, scratch: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cli.main", "dev", "--port", str(port)], cwd=tmp_path,
                                env=_env(scratch), capture_output=True, text=True, timeout=120)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"PORT {port}" in output and "make run PORT=8080" in output
    assert "Traceback" not in output
    assert not list(scratch.iterdir()), "it started something before checking the port"


def test_dev_serves_on_its_port_with_the_demo_model_on_the_next_and_cleans_up(tmp_path: Path, scratch: Path) -> None:
    port = _two_free_ports()
    env = _env(scratch, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing there: an embedded Redis
               DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}")  # fmt: skip
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        popen = subprocess.Popen([sys.executable, "-m", "cli.main", "dev", "--port", str(port)], cwd=tmp_path,
                                 env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    dev = Process("dev", popen, log)
    try:
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/readyz"), "the API", dev, timeout=180)
        wait_for(lambda: _ok(f"http://127.0.0.1:{port + 1}/v1/models"), "the demo model", dev, timeout=60)
        assert any(p.name.startswith("sse-relay-redis-") for p in scratch.iterdir())
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/generations", json={"prompt": "echo:hi"},
                            headers={"Prefer": "respond-async"}, timeout=10)  # fmt: skip
        assert answer.status_code in (200, 202), answer.text
        popen.send_signal(signal.SIGINT)
        assert popen.wait(timeout=120) == 0, log.read_text()
    finally:
        dev.kill()
    assert not list(scratch.iterdir()), "temporary directories left behind"
    assert "Traceback" not in log.read_text()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

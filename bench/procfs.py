"""What a benchmark reads about running processes: CPU time, RSS, Redis connections (/proc), Redis commandstats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any, cast

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far (utime, stime of /proc/<pid>/stat); NaN once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat):
    a process that waits much more than it runs is starved by the machine's other load, not busy."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError):
            total += int(task.read_text().split()[1])
    return total / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def tcp_connections(pid: int, remote_ports: set[int]) -> int:
    """Established TCP connections of `pid` to any of `remote_ports`: its socket inodes found in
    /proc/<pid>/net/tcp[6]. Exact per process, unlike CLIENT LIST (which cannot name the local process)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    for entry in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed between listdir and readlink
            if (target := os.readlink(fd_dir / entry)).startswith("socket:["):
                inodes.add(target[8:-1])
    markers = tuple(f":{port:04X} 01 " for port in remote_ports)  # remote address, then state ESTABLISHED
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as handle:
            count += sum(1 for line in handle if any(m in line for m in markers) and line.split()[9] in inodes)
    return count


def command_calls(urls: list[str]) -> int:
    """Commands run so far by the Redis servers at `urls` (INFO commandstats: a script call and every command
    it runs inside count one each), INFO itself excepted."""
    total = 0
    for url in urls:
        with redis.Redis.from_url(url) as client:
            stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
            total += sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping"))
    return total


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


class Sampler:
    """While a phase runs: each process's Redis connections and RSS every `interval` s, and its CPU seconds
    (`cpu`) and seconds waiting for a CPU (`waited`) over the phase; `elapsed` is the phase's wall time."""

    def __init__(self, pids: dict[str, int], redis_ports: set[int], interval: float = 0.5) -> None:
        self.pids, self.ports, self.interval = pids, redis_ports, interval
        self.connections: dict[str, int] = dict.fromkeys(pids, 0)
        self.rss_kib: dict[str, int] = dict.fromkeys(pids, 0)
        self.cpu: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        self.elapsed = 0.0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                self.connections[name] = max(self.connections[name], tcp_connections(pid, self.ports))
                self.rss_kib[name] = max(self.rss_kib[name], rss_kib(pid))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Sampler:
        self._started = time.monotonic()
        self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.waited = {name: runqueue_wait_s(pid) for name, pid in self.pids.items()}
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.elapsed = time.monotonic() - self._started
        self.cpu = {name: cpu_seconds(pid) - self.cpu[name] for name, pid in self.pids.items()}
        self.waited = {name: runqueue_wait_s(pid) - self.waited[name] for name, pid in self.pids.items()}

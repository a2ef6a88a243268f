"""`python -m bench.client_resume [--runs N]`: how long the Python client (sse_relay) takes to resume a stream,
(1) when its only API is SIGKILLed and restarted on the same port, split into the restart itself and the
client's own lag after the new API is ready, and (2) when the API behind a switch is SIGKILLed and the switch
sends the reconnect to a second instance (what a load balancer in front of several instances gives)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cli.embedded_redis import free_port
from sse_relay import Backoff, RelayClient
from tests.support.services import TEST_DB, real_redis
from tests.support.stack import Process, Stack, _get_ok, running_stack, wait_for
from tests.support.switch import running_switch

TEXT = "".join(f"<{i:02d}>" for i in range(80))
MODEL = "demo@chunk=4,delay_ms=40"  # ~3 s of answer: the break lands mid-stream
BREAK_AT = 3  # events received before the API is killed


def _start_api(stack: Stack, name: str, port: int) -> Process:
    return stack.start(name, ["-m", "uvicorn", "api.main:app", "--port", str(port)])


def _ready(port: int, process: Process) -> None:
    wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/readyz"), f"the API on {port}", process, timeout=120)


def restart(stack: Stack, run: int) -> tuple[float, float]:
    """-> (SIGKILL to the next event, SIGKILL to the new API answering /readyz)."""
    port = free_port()
    api = _start_api(stack, f"resume-{run}", port)
    _ready(port, api)
    marks: dict[str, float] = {}

    def mark_ready() -> None:
        while not _get_ok(f"http://127.0.0.1:{port}/readyz"):
            time.sleep(0.01)
        marks["ready"] = time.monotonic()

    with RelayClient(f"http://127.0.0.1:{port}", backoff=Backoff(tries=100, max_s=1.0)) as relay:
        for count, _ in enumerate(relay.stream(f"echo:{TEXT}", model=MODEL), start=1):
            if count == BREAK_AT:
                api.kill()
                marks["kill"] = time.monotonic()
                api = _start_api(stack, f"resume-{run}-restarted", port)
                threading.Thread(target=mark_ready, daemon=True).start()
            elif count == BREAK_AT + 1:
                marks["resumed"] = time.monotonic()
    api.stop()
    return marks["resumed"] - marks["kill"], marks["ready"] - marks["kill"]


def failover(stack: Stack, run: int) -> float:
    """-> SIGKILL of instance A (and the switch turned to B) to the next event."""
    ports = free_port(), free_port()
    apis = [_start_api(stack, f"failover-{run}-{side}", port) for side, port in zip("ab", ports, strict=True)]
    for port, api in zip(ports, apis, strict=True):
        _ready(port, api)
    killed = 0.0
    resumed = 0.0
    with running_switch(ports[0]) as switch, RelayClient(switch.url) as relay:
        for count, _ in enumerate(relay.stream(f"echo:{TEXT}", model=MODEL), start=1):
            if count == BREAK_AT:
                apis[0].kill()
                switch.switch_to(ports[1])
                killed = time.monotonic()
            elif count == BREAK_AT + 1:
                resumed = time.monotonic()
    apis[1].stop()
    return resumed - killed


def _line(label: str, values: list[float]) -> str:
    return f"{label}: median {statistics.median(values):.3f} s, min {min(values):.3f}, max {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with (
        real_redis() as base,
        tempfile.TemporaryDirectory() as logdir,
        running_stack(f"{base}/{TEST_DB}", Path(logdir)) as stack,
    ):
        restarts = [restart(stack, run) for run in range(runs)]
        failovers = [failover(stack, run) for run in range(runs)]
    print(f"{runs} runs each")
    print(_line("API SIGKILL + restart, kill -> next event", [total for total, _ in restarts]))
    print(_line("  of which the restart (kill -> /readyz)", [ready for _, ready in restarts]))
    print(_line("  and the client's lag after /readyz", [total - ready for total, ready in restarts]))
    print(_line("failover to a 2nd API behind a switch, kill -> next event", failovers))


if __name__ == "__main__":
    main()

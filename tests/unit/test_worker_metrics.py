"""The worker's metrics server: served on its port, off at 0, and a taken port is a warning, never a crash."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest

from cli.embedded_redis import free_port
from shared.config import Settings
from worker import metrics


class _Queue:
    """Stands in for the arq Redis: the queue-depth poller only calls ZCARD."""

    async def zcard(self, name: str) -> int:
        return 7


def _settings(port: int) -> Settings:
    return Settings(worker_metrics_port=port, worker_metrics_host="127.0.0.1", queue_name="q")


async def test_metrics_are_served_on_the_port() -> None:
    port = free_port()
    server = metrics.start(_settings(port), _Queue(), lambda: 3)
    try:
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        assert "sse_relay_worker_jobs_running 3.0" in body
        assert "sse_relay_queue_depth 7.0" in body
        for name in ("sse_relay_queue_wait_seconds_bucket", "sse_relay_time_to_first_token_seconds_bucket"):
            assert f'{name}{{le="0.005"}}' in body and f'{name}{{le="60.0"}}' in body
    finally:
        await server.stop()


async def test_port_zero_serves_nothing() -> None:
    server = metrics.start(_settings(0), _Queue(), lambda: 0)
    try:
        assert server.server is None
    finally:
        await server.stop()


async def test_a_taken_port_is_a_clear_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="sse_relay.worker"):
            server = metrics.start(_settings(port), _Queue(), lambda: 0)
        try:
            assert server.server is None
        finally:
            await server.stop()
    assert f"port {port} is not available" in caplog.text
    assert "WORKER_METRICS_PORT" in caplog.text

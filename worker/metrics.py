"""Prometheus metrics of a worker process, served on WORKER_METRICS_PORT by a thread started at worker start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.config import Settings
from shared.metrics import FINISHED, REDIS_ERRORS, RESETS
from shared.tasks import cancel_and_wait

__all__ = [
    "FINISHED",
    "HOOK_CALLS",
    "LEASES_LOST",
    "QUEUE_DEPTH",
    "QUEUE_WAIT",
    "REDIS_ERRORS",
    "RESETS",
    "RETRIED_ATTEMPTS",
    "TOKENS",
    "TTFT",
    "WEBHOOK_DELIVERIES",
    "MetricsServer",
    "observe_queue_wait",
    "observe_ttft",
    "start",
]

log = logging.getLogger("sse_relay.worker")

# From a few milliseconds (an idle worker woken at once) to a minute (a long queue, a slow provider).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)

QUEUE_WAIT = Histogram(
    "sse_relay_queue_wait_seconds",
    "From enqueue to a worker starting the generation's first attempt",
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "sse_relay_time_to_first_token_seconds",
    "From enqueue to the generation's first piece of output from the provider",
    buckets=LATENCY_BUCKETS,
)
# Stream pieces (content or reasoning deltas) received from the provider: about one token each.
TOKENS = Counter("sse_relay_tokens_total", "Pieces of output received from the provider (about one token each)")
LEASES_LOST = Counter(
    "sse_relay_leases_lost_total",
    "Attempts stopped because their lease lapsed and a newer attempt took the generation over",
)
RETRIED_ATTEMPTS = Counter(
    "sse_relay_retried_attempts_total",
    "Attempts after the first (an earlier attempt's worker died or its lease lapsed)",
)
HOOK_CALLS = Counter(
    "sse_relay_hook_calls_total",
    "Hook calls by hook kind and outcome (ok, error, timeout)",
    ["hook", "outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "sse_relay_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered; retried: will be tried again; failed: given up)",
    ["outcome"],
)
QUEUE_DEPTH = Gauge("sse_relay_queue_depth", "Jobs in the arq queue (queued and running), read every few seconds")
RUNNING = Gauge("sse_relay_worker_jobs_running", "Jobs this worker process is running")

_DEPTH_EVERY_S = 5.0


def observe_queue_wait(created_at: float) -> None:
    QUEUE_WAIT.observe(max(0.0, time.time() - created_at))


def observe_ttft(created_at: float) -> None:
    TTFT.observe(max(0.0, time.time() - created_at))


@dataclass
class MetricsServer:
    """The HTTP server thread (None when disabled or its port was taken) and the queue-depth poller."""

    server: WSGIServer | None
    thread: threading.Thread | None
    depth_task: asyncio.Task[None] | None

    async def stop(self) -> None:
        if self.depth_task is not None:
            await cancel_and_wait(self.depth_task)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start(settings: Settings, queue: Any, running: Any) -> MetricsServer:
    """Serve /metrics on WORKER_METRICS_PORT (0: not at all); a taken port is logged, never fatal.

    `queue` is the arq Redis (its queue's length is read every few seconds, so a scrape never waits on Redis);
    `running` returns this process's running job count.
    """
    RUNNING.set_function(running)
    depth_task = asyncio.ensure_future(_poll_depth(queue, settings.queue_name))
    port = settings.worker_metrics_port
    if port == 0:
        return MetricsServer(None, None, depth_task)
    try:
        server, thread = start_http_server(port, settings.worker_metrics_host)
    except OSError as exc:
        log.warning(
            "worker metrics not served: port %d is not available (%s); set WORKER_METRICS_PORT to a free port or 0",
            port, exc.strerror or type(exc).__name__,
        )  # fmt: skip
        return MetricsServer(None, None, depth_task)
    log.info("worker metrics on port %d", server.server_port)
    return MetricsServer(server, thread, depth_task)


async def _poll_depth(queue: Any, queue_name: str) -> None:
    while True:
        with contextlib.suppress(Exception):  # Redis away: keep the last value, try again next round
            QUEUE_DEPTH.set(await asyncio.wait_for(queue.zcard(queue_name), _DEPTH_EVERY_S))
        await asyncio.sleep(_DEPTH_EVERY_S)

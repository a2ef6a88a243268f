"""Prometheus metrics both processes register: endings, Redis errors and `reset` events (each exports its own)."""

from __future__ import annotations

from prometheus_client import Counter

# Worker: `retry` (a new attempt after one that had published text). API: `replay_truncated` (a resuming
# client's missing events were trimmed from the stream, or only the stored record is left).
RESETS = Counter("sse_relay_resets_total", "reset events sent, by reason", ["reason"])
# Worker: every ending it writes (and the reaper's `worker_lost`). API: a generation cancelled while queued,
# whose terminal event the API writes itself.
FINISHED = Counter(
    "sse_relay_generations_finished_total",
    "Generations ended, by status and error code (code 'none' for done)",
    ["status", "code"],
)
REDIS_ERRORS = Counter(
    "sse_relay_redis_errors_total", "Redis calls that failed because Redis was unreachable (each retry counts)"
)

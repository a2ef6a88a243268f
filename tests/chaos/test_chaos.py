"""The chaos suite in its short form (the full one is `make chaos`): every invariant holds for every generation
while workers are SIGKILLed, APIs restarted, Redis restarted and the upstream fails in every way it can, and
every ending reaches the webhook endpoint (whose first answer to each message is a 500)."""

from __future__ import annotations

import pytest

from tests.chaos.harness import SCENARIOS, ChaosConfig, run_chaos
from tests.support.cluster import LocalCluster


async def test_every_generation_keeps_every_invariant_through_chaos(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = ChaosConfig(generations=36, in_flight=12, worker_kills=3, api_restarts=2, redis_restarts=1)
    report = await run_chaos(config, tmp_path_factory.mktemp("chaos"))
    summary = report.summary()

    assert report.violations == [], summary
    assert report.generations == config.generations, summary
    assert report.webhooks_delivered == config.generations, summary  # each ending reached the endpoint
    # The run really was chaotic: every process fault happened, most upstream faults were drawn.
    assert report.faults["worker SIGKILL"] == config.worker_kills
    assert report.faults["API restart (SIGTERM)"] == config.api_restarts
    assert report.faults["Redis restart (SIGKILL)"] == config.redis_restarts
    assert len([s for s in SCENARIOS if f"upstream: {s.name}" in report.faults]) >= 5
    assert report.outcomes["done"] > 0, summary


async def test_every_invariant_holds_with_the_streams_on_a_redis_cluster(
    redis_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    nodes = tuple(f"redis://127.0.0.1:{port}" for port in redis_cluster.ports)
    config = ChaosConfig(
        generations=16, in_flight=8, worker_kills=1, api_restarts=1, redis_restarts=1, streams_nodes=nodes
    )
    report = await run_chaos(config, tmp_path_factory.mktemp("chaos-cluster"))
    summary = report.summary()

    assert report.violations == [], summary
    assert report.generations == config.generations, summary
    assert report.webhooks_delivered == config.generations, summary  # each ending reached the endpoint
    assert report.faults["worker SIGKILL"] == config.worker_kills
    assert report.faults["API restart (SIGTERM)"] == config.api_restarts
    assert report.faults["Redis restart (SIGKILL)"] == config.redis_restarts
    assert report.outcomes["done"] > 0, summary

"""The chaos suite's engine: many generations while workers die, APIs and Redis restart and the upstream
misbehaves; afterwards every generation is checked against the invariants. Run by `make chaos` (tests.chaos)
and, in a short form, by `make test` (test_chaos.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource
from redis.asyncio import Redis
from standardwebhooks import Webhook

from cli.embedded_redis import free_port
from shared.ids import parse_stream_id
from tests.support.databases import postgres_database
from tests.support.redis_server import OwnRedis, own_redis
from tests.support.scan import redis_dump, store_dump
from tests.support.stack import Stack, running_stack, wait_for
from tests.support.webhook_receiver import Receiver

API_KEY = "sk-caller-CHAOS-SENTINEL-0f3c"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"chaos-webhook-secret-0123456789ab").decode()
TERMINAL = ("done", "error")
WEBHOOK_TYPES = {"done": "generation.completed", "error": "generation.failed"}


@dataclass(frozen=True)
class Scenario:
    """What the fake upstream does for one generation (its scenario grammar), and the outcome to expect."""

    name: str
    model: str
    weight: int
    ends_done: bool


SCENARIOS = (
    Scenario("clean", "demo@chunk=6,delay_ms=25", 8, True),
    Scenario("429 then ok", "status-429@fail_times=1,retry_after_ms=20,chunk=6,delay_ms=25", 2, True),
    Scenario("503 then ok", "status-503@fail_times=1,chunk=6,delay_ms=25", 2, True),
    Scenario("500", "status-500", 1, False),
    Scenario("cut", "cut@chunk=6,delay_ms=25,after=4", 1, False),
    Scenario("truncate", "truncate@chunk=6,delay_ms=25,after=4", 1, False),
    Scenario("stall", "stall@chunk=6,delay_ms=25,after=3", 1, False),
    Scenario("malformed", "malformed@chunk=6,after=3", 1, False),
)


@dataclass
class ChaosConfig:
    generations: int = 40
    in_flight: int = 16
    worker_kills: int = 3
    api_restarts: int = 2
    redis_restarts: int = 1
    seed: int = 20261126
    generation_deadline_s: float = 150.0
    # Streams on a Redis Cluster (its node URLs, the first one given to STREAMS_REDIS_URL as redis+cluster://);
    # the Redis restarted is then the queue's.
    streams_nodes: tuple[str, ...] = ()


@dataclass
class Outcome:
    """One generation as its client saw it, across reconnects."""

    index: int
    scenario: Scenario
    text: str
    start_at: float = 0.0
    generation_id: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    wire: list[str] = field(default_factory=list)
    reconnects: int = 0
    create_retries: int = 0
    failure: str | None = None


@dataclass
class ChaosReport:
    config: ChaosConfig
    generations: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    resets: int = 0
    reconnects: int = 0
    create_retries: int = 0
    hooks_run: int = 0
    webhooks_delivered: int = 0
    webhook_redeliveries: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "generations": self.generations,
            "outcomes": dict(sorted(self.outcomes.items())),
            "faults_injected": dict(sorted(self.faults.items())),
            "resets_seen": self.resets,
            "client_reconnects": self.reconnects,
            "create_retries": self.create_retries,
            "on_complete_runs": self.hooks_run,
            # At least once: a worker killed between the receiver's 2xx and its record sends it again.
            "webhooks_delivered": self.webhooks_delivered,
            "webhook_redeliveries": self.webhook_redeliveries,
            "invariant_violations": len(self.violations),
            "seconds": round(self.seconds, 1),
        }


class Cluster:
    """Two APIs and two workers of one stack, on a Redis of their own; processes to kill and bring back."""

    def __init__(self, stack: Stack, redis: OwnRedis, receiver: Receiver) -> None:
        self.stack = stack
        self.redis = redis
        self.receiver = receiver
        self.api_ports = [int(stack.api_url.rsplit(":", 1)[1]), free_port()]
        self.generation = Counter[str]()

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    def start_second_api(self) -> None:
        self._start_api(1)

    def _start_api(self, index: int) -> None:
        self.generation[f"api{index}"] += 1
        name = f"api{index}-{self.generation[f'api{index}']}"
        port = str(self.api_ports[index])
        self.stack.start(name, ["-m", "uvicorn", "api.main:app", "--port", port, "--timeout-graceful-shutdown", "3"])
        wait_for(lambda: _ready(self.api_urls[index]), name, self.stack.processes[name])

    def restart_api(self, index: int) -> None:
        """SIGTERM (a deploy): open streams end, clients reconnect to either API and resume."""
        for name, process in list(self.stack.processes.items()):
            ours = (name == "api" and index == 0) or name.startswith(f"api{index}-")
            if ours and process.popen.poll() is None:
                process.stop()
        self._start_api(index)

    def kill_worker(self) -> None:
        """SIGKILL one running worker (a crash), then start a fresh one in its place."""
        alive = [p for name, p in self.stack.processes.items() if name.startswith("worker") and p.popen.poll() is None]
        random.choice(alive).kill()
        self.generation["worker"] += 1
        self.stack.start_worker(f"worker-r{self.generation['worker']}")

    def restart_redis(self, outage_s: float) -> None:
        self.redis.kill()
        time.sleep(outage_s)
        self.redis.start()

    def dead_processes(self) -> list[str]:
        """Processes that exited without being told to (every stop above is followed by a start)."""
        return [
            name
            for name, p in self.stack.processes.items()
            if p.popen.poll() is not None and p.popen.returncode not in (0, -9, -15)
        ]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


async def run_chaos(config: ChaosConfig, workdir: Path) -> ChaosReport:
    """Starts everything, runs the generations and the faults, checks the invariants, stops everything."""
    streams = {}
    if config.streams_nodes:
        streams["STREAMS_REDIS_URL"] = config.streams_nodes[0].replace("redis://", "redis+cluster://", 1)
    # Every endpoint's first attempt of each message fails: every delivery goes through a retry, through the kills.
    receiver = Receiver()
    receiver.fail_first = 1
    async with postgres_database() as database_url:
        with own_redis(workdir / "redis") as redis, running_stack(
            redis.url,
            workdir,
            **streams,
            DATABASE_URL=database_url,
            SSE_RELAY_API_KEYS=API_KEY,
            JOB_MAX_TRIES="4",
            # A hook claim left by a killed worker is taken over once its timeout is surely over.
            HOOK_TIMEOUT_S="2",
            UPSTREAM_MAX_RETRIES="2",
            WEBHOOK_URLS=receiver.url,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            WEBHOOK_RETRY_FIRST_S="0.3",
            WEBHOOK_RETRY_MAX_S="1",
            WEBHOOK_POLL_S="0.2",
            WEBHOOK_TIMEOUT_S="2",
        ) as stack:  # fmt: skip
            cluster = Cluster(stack, redis, receiver)
            await asyncio.to_thread(cluster.start_second_api)
            stack.start_worker("worker-2")
            try:
                return await _run(config, cluster, database_url, workdir)
            finally:
                receiver.close()


async def _run(config: ChaosConfig, cluster: Cluster, database_url: str, workdir: Path) -> ChaosReport:
    rng = random.Random(config.seed)
    report = ChaosReport(config)
    started = time.monotonic()
    # Arrivals spread over the time the process faults take, so every fault meets generations in flight.
    span_s = 2.0 * (config.worker_kills + config.api_restarts + config.redis_restarts)
    outcomes = [_plan(index, rng, span_s) for index in range(config.generations)]
    for outcome in outcomes:
        report.faults[f"upstream: {outcome.scenario.name}"] += 0 if outcome.scenario.name == "clean" else 1
    report.faults = +report.faults  # drop the zero entries
    gate = asyncio.Semaphore(config.in_flight)
    clients = [asyncio.ensure_future(_client(cluster, outcome, gate, config, rng)) for outcome in outcomes]
    await _inject_faults(config, cluster, report, rng)
    await asyncio.gather(*clients)
    report.seconds = time.monotonic() - started
    await _check(cluster, outcomes, report, database_url, workdir)
    return report


def _plan(index: int, rng: random.Random, span_s: float) -> Outcome:
    scenario = rng.choices(SCENARIOS, weights=[s.weight for s in SCENARIOS])[0]
    words = " ".join(f"w{index}.{n}-ünï" for n in range(rng.randint(20, 60)))
    return Outcome(index, scenario, f"chaos #{index}: {words}", start_at=rng.uniform(0, span_s))


async def _inject_faults(config: ChaosConfig, cluster: Cluster, report: ChaosReport, rng: random.Random) -> None:
    """The process faults, spread over the run while generations are in flight, in a shuffled order."""
    actions = (
        ["worker_kill"] * config.worker_kills
        + ["api_restart"] * config.api_restarts
        + ["redis_restart"] * config.redis_restarts
    )
    rng.shuffle(actions)
    for action in actions:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        if action == "worker_kill":
            await asyncio.to_thread(cluster.kill_worker)
            report.faults["worker SIGKILL"] += 1
        elif action == "api_restart":
            await asyncio.to_thread(cluster.restart_api, rng.randrange(2))
            report.faults["API restart (SIGTERM)"] += 1
        else:
            await asyncio.to_thread(cluster.restart_redis, rng.uniform(1.0, 2.5))
            report.faults["Redis restart (SIGKILL)"] += 1


async def _client(
    cluster: Cluster, outcome: Outcome, gate: asyncio.Semaphore, config: ChaosConfig, rng: random.Random
) -> None:
    """Creates one generation (retrying with one Idempotency-Key) and follows it to its terminal event,
    reconnecting to either API with Last-Event-ID whenever the connection breaks."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    await asyncio.sleep(outcome.start_at)
    deadline = time.monotonic() + config.generation_deadline_s
    async with gate, httpx.AsyncClient(timeout=httpx.Timeout(30.0), headers=headers) as http:
        try:
            outcome.generation_id = await _create(http, cluster, outcome, rng, deadline)
            await _follow(http, cluster, outcome, rng, deadline)
        except TimeoutError as exc:
            outcome.failure = str(exc)


async def _create(
    http: httpx.AsyncClient, cluster: Cluster, outcome: Outcome, rng: random.Random, deadline: float
) -> str:
    body = {
        "prompt": f"echo:{outcome.text}",
        "model": outcome.scenario.model,
        "on_complete": "record_completion",
        "background": True,
    }
    key = {"Idempotency-Key": f"chaos-{outcome.index}-{outcome.text[:8]}"}
    while time.monotonic() < deadline:
        try:
            response = await http.post(f"{rng.choice(cluster.api_urls)}/v1/generations", json=body, headers=key)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code in (200, 202):
            outcome.wire.append(response.text)
            return str(response.json()["id"])
        if response is not None and response.status_code != 503:
            raise TimeoutError(f"create answered {response.status_code}: {response.text[:200]}")
        outcome.create_retries += 1
        await asyncio.sleep(0.2)
    raise TimeoutError("never created")


async def _follow(
    http: httpx.AsyncClient, cluster: Cluster, outcome: Outcome, rng: random.Random, deadline: float
) -> None:
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": outcome.events[-1][0]} if outcome.events else {}
        url = f"{rng.choice(cluster.api_urls)}/v1/generations/{outcome.generation_id}/events"
        try:
            async with http.stream("GET", url, headers=headers) as response:
                if response.status_code == 204 and outcome.events:
                    return  # resumed at the terminal event
                if response.status_code == 200:
                    async for sse in EventSource(response).aiter_sse():
                        if not sse.data:
                            continue
                        outcome.wire.append(sse.data)
                        outcome.events.append((sse.id, json.loads(sse.data)))
                        if outcome.events[-1][1]["type"] in TERMINAL:
                            return
        except httpx.HTTPError:
            pass
        outcome.reconnects += 1
        await asyncio.sleep(0.2)
    raise TimeoutError("no terminal event before the deadline")


async def _check(
    cluster: Cluster, outcomes: list[Outcome], report: ChaosReport, database_url: str, workdir: Path
) -> None:
    stack = cluster.stack
    headers = {"Authorization": f"Bearer {API_KEY}"}
    completions = await _completions(workdir, outcomes)
    async with httpx.AsyncClient(base_url=cluster.api_urls[0], timeout=30.0, headers=headers) as http:
        for outcome in outcomes:
            view = (await http.get(f"/v1/generations/{outcome.generation_id}")).json() if outcome.generation_id else {}
            outcome.wire.append(json.dumps(view))
            report.violations += [f"#{outcome.index} ({outcome.scenario.name}): {v}" for v in _violations(
                outcome, view, completions.get(outcome.generation_id, 0))]  # fmt: skip
            report.generations += 1
            report.outcomes[_outcome_label(outcome)] += 1
            report.resets += sum(1 for _, event in outcome.events if event["type"] == "reset")
            report.reconnects += outcome.reconnects
            report.create_retries += outcome.create_retries
    report.hooks_run = sum(completions.values())
    report.violations += await _webhook_violations(cluster.receiver, outcomes, report)
    dumps = [await redis_dump(url) for url in (cluster.redis.url, *report.config.streams_nodes)]
    report.violations += _secret_violations(stack, outcomes, b"\n".join(dumps), await store_dump(database_url))
    report.violations += [f"process exited on its own: {name}" for name in cluster.dead_processes()]
    report.violations += await _leftover_jobs(cluster)


async def _leftover_jobs(cluster: Cluster) -> list[str]:
    """Every job ends: once the clients are done, the queue and the in-progress keys empty out (a deferred
    retry of a stale attempt may take a few seconds to find its generation ended)."""
    redis = Redis.from_url(cluster.redis.url)
    queue = cluster.stack.env["SSE_RELAY_QUEUE_NAME"]
    try:
        for _ in range(300):
            # Generations' jobs only: the worker's cron sweep has jobs of its own.
            queued = [job for job in await redis.zrange(queue, 0, -1) if job.startswith(b"gen_")]
            running = [key async for key in redis.scan_iter("arq:in-progress:gen_*")]
            if not queued and not running:
                return []
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    return [f"{len(queued)} jobs still queued and {len(running)} in progress after every generation ended"]


async def _completions(workdir: Path, outcomes: list[Outcome]) -> dict[str, int]:
    """on_complete runs per generation, once every `done` generation's hook had time to run."""
    path = workdir / "completions.log"
    done = {o.generation_id for o in outcomes if o.events and o.events[-1][1]["type"] == "done"}
    counts: Counter[str] = Counter()
    for _ in range(200):
        lines = path.read_text().splitlines() if path.exists() else []
        counts = Counter(line.split()[0] for line in lines)
        if done <= set(counts):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a second run would show up now
    lines = path.read_text().splitlines() if path.exists() else []
    return dict(Counter(line.split()[0] for line in lines))


async def _webhook_violations(receiver: Receiver, outcomes: list[Outcome], report: ChaosReport) -> list[str]:
    """Each ended generation reaches the endpoint under one webhook-id, verified, describing the ending its
    client saw; the first attempt of each was refused, so each arrived at least twice."""
    ended = [o for o in outcomes if not o.failure and o.events and o.events[-1][1]["type"] in TERMINAL]
    for _ in range(300):
        if all(len(receiver.of(o.generation_id)) >= 2 for o in ended):
            break
        await asyncio.sleep(0.1)
    found: list[str] = []
    for outcome in ended:
        received = receiver.of(outcome.generation_id)
        if len(received) < 2:
            found.append(f"#{outcome.index}: {len(received)} webhook requests, not the refused one and its retry")
            continue
        report.webhooks_delivered += 1
        report.webhook_redeliveries += len(received) - 2
        if len({r.webhook_id for r in received}) != 1:
            found.append(f"#{outcome.index}: {len({r.webhook_id for r in received})} webhook ids for one ending")
        last = outcome.events[-1][1]
        for request in received:
            payload = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
            data = payload["data"]
            if payload["type"] != WEBHOOK_TYPES[last["type"]] or (data["error"] or {}).get("code") != last.get("code"):
                found.append(f"#{outcome.index}: webhook {payload['type']} {data['error']} after a {last['type']}")
                break
    return found


def _outcome_label(outcome: Outcome) -> str:
    if outcome.failure or not outcome.events:
        return "no terminal"
    last = outcome.events[-1][1]
    return "done" if last["type"] == "done" else f"error: {last['code']}"


def _violations(outcome: Outcome, view: dict[str, Any], hook_runs: int) -> list[str]:
    if outcome.failure:
        return [outcome.failure]
    found: list[str] = []
    ids = [parse_stream_id(event_id) for event_id, _ in outcome.events]
    if any(a is None or b is None or a >= b for a, b in itertools.pairwise(ids)):
        found.append("event ids not strictly increasing across reconnects (a duplicate or a reordering)")
    kinds = [event["type"] for _, event in outcome.events]
    terminals = sum(kind in TERMINAL for kind in kinds)
    if terminals != 1 or kinds[-1] not in TERMINAL:
        found.append(f"{terminals} terminal events")
        return found
    text = _shown_text(outcome.events)
    last = outcome.events[-1][1]
    if last["type"] == "done":
        sha = hashlib.sha256(text.encode()).hexdigest()
        if sha != last["data"]["sha256"]:
            found.append("the text the client assembled does not match the done event's sha256")
        if hashlib.sha256(view.get("text", "").encode()).hexdigest() != sha or view.get("status") != "done":
            found.append("the stored result does not match the done text")
        if text != outcome.text:
            found.append("done, but not with the requested text")
        if hook_runs != 1:
            found.append(f"on_complete ran {hook_runs} times for a done generation")
    else:
        if view.get("status") != "error" or (view.get("error") or {}).get("code") != last["code"]:
            found.append("the stored result does not match the error event")
        if hook_runs:
            found.append("on_complete ran for a generation that did not end done")
        if outcome.scenario.ends_done and last["code"] != "worker_lost":
            found.append(f"a generation whose upstream recovers ended with {last['code']}")
    return found


def _shown_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    text: list[str] = []
    for _, event in events:
        if event["type"] == "reset":
            text.clear()
        elif event["type"] == "content":
            text.append(event["data"])
    return "".join(text)


def _secret_violations(stack: Stack, outcomes: list[Outcome], redis: bytes, store: str) -> list[str]:
    found: list[str] = []
    logs = stack.logs()
    for secret in (stack.secret, API_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")):
        places = {
            "an event or response": any(secret in w for o in outcomes for w in o.wire),
            "a log line": secret in logs,
            "Redis": secret.encode() in redis,
            "the result store": secret in store,
        }
        found += [f"a secret reached {place}" for place, leaked in places.items() if leaked]
    if stack.prefix.encode() not in redis or "chaos #" not in store:
        found.append("the secret scan did not see the run's data")
    return found

"""The seed's two examples, ported to Python (examples/, quoted in the README), run as real apps."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import free_port
from demo.model import answer_for
from sse_relay import RelayClient
from tests.support.sse import EventReader, assert_well_formed, read_events, text_of
from tests.support.stack import ROOT, Process, Stack, wait_for


@pytest.fixture(scope="module")
def example_apps(stack: Stack) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    started: list[Process] = []
    # seed_basic mounts the relay's read routes itself; seed_callbacks points clients at the relay instead.
    envs = {"seed_basic": stack.env, "seed_callbacks": {**stack.env, "SSE_RELAY_PUBLIC_URL": stack.api_url}}
    for module, env in envs.items():
        port = free_port()
        args = ["-m", "uvicorn", f"examples.{module}:app", "--port", str(port)]
        process = stack.start(f"example-{module}", args, env=env)
        started.append(process)
        urls[module] = f"http://127.0.0.1:{port}"
        wait_for(lambda url=urls[module]: _answers(url), module, process)
    yield urls
    for process in started:
        process.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/docs", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_readme_quotes_the_example_files() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    for name in ("seed_basic.py", "story_hooks.py", "seed_callbacks.py"):
        source = (ROOT / "examples" / name).read_text(encoding="utf-8")
        assert source in blocks, f"README.md must quote examples/{name} verbatim"


async def test_basic_example_streams_the_answer(example_apps: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        # The seed's own client sends the body as text/plain.
        request = client.stream("POST", f"{example_apps['seed_basic']}/api/my-endpoint", content='{"prompt": "Hello"}')
        async with request as response:
            assert response.status_code == 200
            assert response.headers["x-generation-id"].startswith("gen_")
            events = await read_events(response)
    assert_well_formed(events)
    messages = [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hello"}]
    assert text_of(events) == answer_for(messages)


async def test_callbacks_example_runs_hooks_on_the_worker(example_apps: dict[str, str], stack: Stack) -> None:
    url = f"{example_apps['seed_callbacks']}/api/weaver/generate"
    async with httpx.AsyncClient(timeout=30) as client, client.stream("POST", url) as response:
        generation_id = response.headers["x-generation-id"]
        events = await read_events(response)
    text = answer_for([{"role": "user", "content": "User input..."}])
    assert text_of(events) == text
    worker_log = Path(stack.processes["worker"].log)
    expected = f"Generation completed: {len(text)} chars {generation_id}"
    deadline = time.monotonic() + 10
    while expected not in worker_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "on_complete did not run on the worker"
        await asyncio.sleep(0.05)
    assert worker_log.read_text(errors="replace").count(expected) == 1
    assert "Received chunk:" in worker_log.read_text(errors="replace")
    # The generation is an ordinary one: the relay's own API knows it.
    async with httpx.AsyncClient(base_url=stack.api_url) as api:
        view = (await api.get(f"/v1/generations/{generation_id}")).json()
    assert view["on_complete"]["name"] == "examples.story_hooks:save_story"
    assert view["on_complete"]["status"] == "ok"


async def test_a_client_of_the_basic_example_resumes_at_its_location(example_apps: dict[str, str]) -> None:
    url = example_apps["seed_basic"]
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{url}/api/my-endpoint", json={"prompt": "Hello"}) as response:
            location = response.headers["location"]
            before = await EventReader(response).take(1)  # then the connection drops
        # The Location the helper answered resolves in the example app itself.
        view = await client.get(f"{url}{location}")
        assert view.status_code == 200 and view.json()["id"] == response.headers["x-generation-id"]
    generation_id = location.rsplit("/", 1)[1]
    with RelayClient(url) as relay:
        rest = list(relay.events(generation_id, last_event_id=before[-1].id))
        assert relay.get(generation_id).status == "done"
    messages = [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hello"}]
    head = "".join(e.data["data"] for e in before if e.type == "content")
    assert head + "".join(e.data for e in rest if e.type == "content") == answer_for(messages)
    assert [e.type for e in rest][-1] == "done"  # and nothing twice: the text above would show it


async def test_with_a_public_url_the_location_points_at_the_relay(example_apps: dict[str, str], stack: Stack) -> None:
    url = f"{example_apps['seed_callbacks']}/api/weaver/generate"
    async with httpx.AsyncClient(timeout=30) as client, client.stream("POST", url) as response:
        location = response.headers["location"]
        await EventReader(response).take(1)
    assert location == f"{stack.api_url}/v1/generations/{response.headers['x-generation-id']}"
    with RelayClient(stack.api_url) as relay:
        result = relay.events(location.rsplit("/", 1)[1]).result()
    assert result.text == answer_for([{"role": "user", "content": "User input..."}])

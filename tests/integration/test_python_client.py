"""The Python client (sse_relay) against the real stack, through failures: an API SIGKILLed and restarted
mid-stream (sync and async), a worker SIGKILLed (reset), an error terminal, and a reconnect that lands on
another API instance behind a switch."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cli.embedded_redis import free_port
from demo.model import answer_for
from sse_relay import AsyncRelayClient, Backoff, Event, RelayClient, RelayError
from tests.support.stack import Process, Stack, _get_ok, running_stack, wait_for
from tests.support.switch import running_switch

LONG = "".join(f"<{i:02d}>" for i in range(80))
SLOW = "demo@chunk=4,delay_ms=40"  # 80 pieces over ~3 s: long enough to break something mid-stream
# Generous enough to outlast an API restart on a loaded 2-core machine (measured up to 18 s): ~45 s of tries.
PATIENT = Backoff(tries=60, first_s=0.1, max_s=1.0)


@pytest.fixture(scope="module")
def client_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: these tests kill and restart APIs and workers.
    with running_stack(redis_url, tmp_path_factory.mktemp("client-stack")) as stack:
        yield stack


def start_api(stack: Stack, name: str, port: int) -> Process:
    args = ["-m", "uvicorn", "api.main:app", "--port", str(port), "--timeout-graceful-shutdown", "3"]
    return stack.start(name, args)


def wait_ready(port: int, process: Process) -> None:
    wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/readyz"), f"the API on {port}", process)


def assert_once_each(events: list[Event]) -> None:
    ids = [tuple(int(part) for part in e.id.split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "an event was delivered twice or out of order"
    assert [e.type for e in events if e.terminal] == [events[-1].type], "exactly one terminal event, last"


def text_after_last_reset(events: list[Event]) -> str:
    text: list[str] = []
    for event in events:
        if event.type == "reset":
            text.clear()
        elif event.type == "content":
            text.append(event.data)
    return "".join(text)


def test_generate_returns_the_checked_answer(client_stack: Stack) -> None:
    with RelayClient(client_stack.api_url) as relay:
        result = relay.generate("Hello")
        assert result.text == answer_for([{"role": "user", "content": "Hello"}])
        assert result.status == "done" and result.finish_reason == "stop"
        assert result.usage is not None and result.id.startswith("gen_")
        # The same answer later, by id: from GET, and by replaying the events from the start.
        assert relay.get(result.id).text == result.text
        assert relay.events(result.id).result().text == result.text


def test_an_error_terminal_raises_with_its_code(client_stack: Stack) -> None:
    with RelayClient(client_stack.api_url) as relay:
        with pytest.raises(RelayError) as raised:
            relay.generate("Hello", model="status-401")
        assert raised.value.code == "upstream_auth" and raised.value.retryable is False
        events = list(relay.stream("Hello", model="cut@after=2"))
        assert events[-1].type == "error" and events[-1].code == "upstream_unavailable"
        with pytest.raises(RelayError) as refused:
            relay.generate("Hello", temperature=7)
        assert refused.value.code == "validation_error" and refused.value.status == 422


def test_a_reconnect_at_the_terminal_event_fetches_the_result(client_stack: Stack) -> None:
    with RelayClient(client_stack.api_url) as relay:
        stream = relay.stream("Hi there")
        done = list(stream)
        assert stream.id is not None
        # Resuming from the terminal event: the service answers 204; the client fetches the stored result.
        resumed = relay.events(stream.id, last_event_id=done[-1].id)
        assert list(resumed) == []
        assert resumed.result().text == answer_for([{"role": "user", "content": "Hi there"}])


def test_sync_stream_survives_an_api_sigkill_and_restart(client_stack: Stack) -> None:
    port = free_port()
    api = start_api(client_stack, "api-kill-sync", port)
    wait_ready(port, api)
    events: list[Event] = []
    with RelayClient(f"http://127.0.0.1:{port}", backoff=PATIENT) as relay:
        stream = relay.stream(f"echo:{LONG}", model=SLOW)
        for event in stream:
            events.append(event)
            if len(events) == 3:
                api.kill()
                killed_at = time.monotonic()
                api = start_api(client_stack, "api-kill-sync-2", port)
            if len(events) == 4:
                print(f"\nresumed {time.monotonic() - killed_at:.2f} s after the API's SIGKILL")
        assert stream.id is not None
        result = relay.events(stream.id).result()
    assert api.popen.poll() is None, "the restarted API served the rest"
    assert_once_each(events)
    assert events[-1].type == "done"
    assert text_after_last_reset(events) == LONG == result.text
    api.stop()


async def test_async_generate_survives_an_api_sigkill_and_restart(client_stack: Stack) -> None:
    port = free_port()
    api = start_api(client_stack, "api-kill-async", port)
    wait_ready(port, api)
    events: list[Event] = []
    async with AsyncRelayClient(f"http://127.0.0.1:{port}", backoff=PATIENT) as relay:
        stream = relay.stream(f"echo:{LONG}", model=SLOW)
        async for event in stream:
            events.append(event)
            if len(events) == 3:
                api.kill()
                api = start_api(client_stack, "api-kill-async-2", port)
        # generate() over the same machinery: the checked text after the last reset.
        result = await stream.result()
    assert_once_each(events)
    assert text_after_last_reset(events) == LONG == result.text
    api.stop()


def test_a_worker_sigkill_passes_reset_on_and_ends_with_the_exact_text(client_stack: Stack) -> None:
    text = "after the crash, the whole answer. " * 3
    with RelayClient(client_stack.api_url, backoff=PATIENT) as relay:
        events: list[Event] = []
        for event in relay.stream(f"echo:{text}", model="demo@chunk=4,delay_ms=60"):
            events.append(event)
            if len(events) == 2:
                client_stack.processes["worker"].kill()
                client_stack.start_worker("worker-2")
    kinds = [e.type for e in events]
    assert "reset" in kinds, f"the retried attempt must start with reset: {kinds}"
    assert kinds[-1] == "done"
    assert_once_each(events)
    assert text_after_last_reset(events) == text


def test_a_reconnect_through_the_switch_lands_on_the_other_api(client_stack: Stack) -> None:
    first_port, second_port = free_port(), free_port()
    first = start_api(client_stack, "api-a", first_port)
    second = start_api(client_stack, "api-b", second_port)
    wait_ready(first_port, first)
    wait_ready(second_port, second)
    with running_switch(first_port) as switch, RelayClient(switch.url, backoff=PATIENT) as relay:
        events: list[Event] = []
        for event in relay.stream(f"echo:{LONG}", model=SLOW):
            events.append(event)
            if len(events) == 3:
                first.kill()  # instance A is gone for good; only B can serve the rest
                switch.switch_to(second_port)
        assert switch.connections >= 2, "the client reconnected through the switch"
    assert first.popen.poll() is not None
    assert_once_each(events)
    assert text_after_last_reset(events) == LONG
    second.stop()


async def test_async_start_get_events_list_and_cancel(client_stack: Stack) -> None:
    async with AsyncRelayClient(client_stack.api_url) as relay:
        generation_id = await relay.start(f"echo:{LONG}", model="demo@chunk=2,delay_ms=100")
        assert (await relay.get(generation_id)).status in ("queued", "running")
        assert generation_id in [g.id for g in (await relay.list(status=None, limit=100)).items]
        first: list[Event] = []
        async for event in relay.events(generation_id):
            first.append(event)
            if event.type == "content":
                break  # detach: the generation keeps running
        assert await relay.cancel(generation_id) in ("running", "cancelled")
        with pytest.raises(RelayError) as raised:
            await relay.events(generation_id, last_event_id=first[-1].id).result()
        assert raised.value.code == "cancelled"
        assert (await relay.get(generation_id)).status == "cancelled"

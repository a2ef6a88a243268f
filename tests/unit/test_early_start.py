"""worker.early: a provider request sent when its job is taken is read by the generation, or closed unread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

from shared.config import Settings
from shared.jobs import StoredRequest
from worker.early import EarlyStarts
from worker.upstream import Outcome, make_client, stream_pieces

_CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


class _Provider:
    """A provider on a real socket that answers once it is told to, and notes when a connection closes."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.answer = asyncio.Event()
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        self.received.set()
        await self.answer.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK))
        await writer.drain()
        await reader.read()  # the client closes: the body's last chunk never comes
        self.closed.set()


@pytest.fixture
async def provider() -> AsyncIterator[tuple[_Provider, Settings]]:
    fake = _Provider()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield fake, Settings(openai_base_url=f"http://127.0.0.1:{port}/v1", upstream_max_retries=0)
    server.close()


REQUEST = StoredRequest(model="m", messages=[{"role": "user", "content": "hi"}])


async def _until(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 5)


async def _sent(provider: tuple[_Provider, Settings]) -> tuple[openai.AsyncOpenAI, EarlyStarts]:
    """The worker's client, with a request for gen_1 started ahead and received by the provider."""
    fake, settings = provider
    client, early = make_client(settings), EarlyStarts()
    early.start("gen_1", client, REQUEST)
    await _until(fake.received)  # sent before anything reads it
    return client, early


async def test_the_request_goes_out_at_start_and_its_answer_is_read_by_the_generation(
    provider: tuple[_Provider, Settings],
) -> None:
    client, early = await _sent(provider)
    provider[0].answer.set()
    opening = early.take("gen_1")
    assert opening is not None and early.take("gen_1") is None
    outcome = Outcome()
    pieces = [piece.text async for piece in stream_pieces(client, REQUEST, outcome, opening)]
    assert pieces == ["hi"] and outcome.finish_reason == "stop"
    await client.close()


async def test_an_answered_request_nobody_reads_is_closed(provider: tuple[_Provider, Settings]) -> None:
    provider[0].answer.set()
    client, early = await _sent(provider)
    opening = early._pending["gen_1"].opening
    await asyncio.wait_for(asyncio.shield(opening), 5)
    early.discard("gen_1")
    await _until(provider[0].closed)
    assert early.take("gen_1") is None
    await client.close()


async def test_a_request_still_unanswered_when_discarded_is_cancelled(provider: tuple[_Provider, Settings]) -> None:
    client, early = await _sent(provider)
    opening = early._pending["gen_1"].opening
    early.discard("gen_1")
    with pytest.raises(asyncio.CancelledError):
        await opening
    await client.close()


async def test_a_generation_cancelled_while_its_request_is_on_its_way_cancels_the_request(
    provider: tuple[_Provider, Settings],
) -> None:
    client, early = await _sent(provider)
    opening = early.take("gen_1")
    assert opening is not None

    async def read() -> None:
        async for _ in stream_pieces(client, REQUEST, Outcome(), opening):
            pass

    reading = asyncio.ensure_future(read())
    await asyncio.sleep(0)  # waiting on the request now
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    with pytest.raises(asyncio.CancelledError):  # nobody else would have: it is the generation's now
        await asyncio.wait_for(opening, 5)
    await client.close()

"""worker.body through the worker's own client: a busy worker still gets every byte the provider sent before its
connection failed (aiohttp alone discards what it had received but not handed over)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from shared.config import Settings
from shared.errors import ErrorCode
from shared.jobs import StoredRequest
from worker.upstream import Outcome, UpstreamError, make_client, open_stream, stream_pieces

REQUEST = StoredRequest(model="m", messages=[{"role": "user", "content": "hi"}])
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(text: str | None = None, finish: str | None = None) -> bytes:
    content = "null" if text is None else f'"{text}"'
    reason = "null" if finish is None else f'"{finish}"'
    data = f'data: {{"choices": [{{"index": 0, "delta": {{"content": {content}}}, "finish_reason": {reason}}}]}}\n\n'
    return b"%x\r\n%s\r\n" % (len(data), data.encode())


Ending = Callable[[asyncio.StreamWriter], None]


def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()  # FIN, without the body's terminating chunk


def _reset(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()  # RST


async def _provider(parts: list[bytes], ending: Ending) -> AsyncIterator[Settings]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        # The first piece, the rest 30 ms later, and the failure 50 ms after that: while the worker (below) is
        # still busy with the first piece.
        writer.write(_HEAD + parts[0])
        await writer.drain()
        await asyncio.sleep(0.03)
        writer.write(b"".join(parts[1:]))
        await writer.drain()
        await asyncio.sleep(0.05)
        ending(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield Settings(openai_base_url=f"http://127.0.0.1:{port}/v1", upstream_max_retries=0)
    server.close()


async def _read_slowly(settings: Settings) -> tuple[list[str], Outcome, ErrorCode | None]:
    """A worker that takes 200 ms over each piece (a hook, or a loaded machine): the failure is long in by then."""
    client, outcome, texts = make_client(settings), Outcome(), []
    code = None
    try:
        async for piece in stream_pieces(client, REQUEST, outcome):
            texts.append(piece.text)
            await asyncio.sleep(0.2)
    except UpstreamError as exc:
        code = exc.code
    await client.close()
    return texts, outcome, code


@pytest.mark.parametrize("ending", [_close, _reset], ids=["fin", "rst"])
async def test_pieces_sent_before_a_broken_connection_all_arrive(ending: Ending) -> None:
    async for settings in _provider([_chunk("a"), _chunk("b"), _chunk("c")], ending):
        texts, _, code = await _read_slowly(settings)
        assert texts == ["a", "b", "c"]
        assert code is ErrorCode.UPSTREAM_UNAVAILABLE


async def test_a_complete_answer_whose_connection_then_closes_uncleanly_is_complete() -> None:
    done = b"%x\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")
    async for settings in _provider([_chunk("a"), _chunk("b"), _chunk(None, "stop"), done], _close):
        texts, outcome, code = await _read_slowly(settings)
        assert texts == ["a", "b"]
        assert code is None and outcome.finish_reason == "stop"


async def test_a_worker_far_behind_holds_at_most_a_mebibyte_and_loses_nothing() -> None:
    pieces = 4000  # 4000 x ~1 KiB: four times what the reader may hold
    text = "q" * 1000  # no q in the JSON around it: counting them counts the text
    done = b"%x\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(_HEAD)
        for _ in range(pieces):
            writer.write(_chunk(text))
            await writer.drain()
        writer.write(_chunk(None, "stop") + done + b"0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    settings = Settings(openai_base_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
    client = make_client(settings)
    opened = await open_stream(client, REQUEST)
    received, most_held = 0, 0
    async for chunk in opened.chunks():
        received += chunk.count(b"q")
        most_held = max(most_held, opened.held)
        if received < pieces * len(text) // 2:
            await asyncio.sleep(0.001)  # the worker is behind: the provider runs ahead as far as it may
    await opened.aclose()
    await client.close()
    server.close()
    assert received == pieces * len(text)
    assert most_held <= (1 << 20) + 64 * 1024

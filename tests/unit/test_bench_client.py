"""The benchmark's own SSE client and lateness count (bench/): it reports what a real server sent, however the
bytes were split, and lateness is receive time minus the provider's send stamp."""

from __future__ import annotations

import asyncio

import pytest

from bench.common import lateness_ms
from bench.sseclient import Request, Stream, fetch

_CHUNKS = [
    b": ping\n\n",
    b'id: 1-0\ndata: {"type":"content","data":"ab"}\n\ndata: {"type":"con',
    b'tent","data":"cd"}\r\n\r',
    b'\n: ping\n\ndata: {"type":"reset","attempt":2}\n\ndata: {"type":"content","data":"abcd"}\n\n',
    b'data: {"type":"done","data":{"length":4}}\n\n',
]


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for chunk in _CHUNKS:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_events_split_across_chunks_and_line_ends_are_read_exactly() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        stream = await fetch(Request.to(f"http://127.0.0.1:{port}/"), Stream(), max_seconds=10)
    assert stream.ok and stream.status == 200
    assert stream.events == 5 and stream.content_texts == ["ab", "cd", "abcd"]
    assert stream.content_chars == 4  # the reset started the text over
    assert stream.terminal == {"type": "done", "data": {"length": 4}}


async def test_an_error_status_keeps_its_body() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 17\r\n\r\n{"code":"busy!!"}')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        stream = await fetch(Request.to(f"http://127.0.0.1:{port}/"), max_seconds=10)
    assert not stream.ok and stream.error == 'HTTP 503: {"code":"busy!!"}'


def test_lateness_is_receive_time_minus_each_tokens_send_stamp() -> None:
    stream = Stream(wall_offset=1_764_600_000.0)  # the wall clock when perf_counter read 0
    received = 1000.0
    sent = received + stream.wall_offset
    stream.content_times = [received]
    stream.content_texts = [f"{sent - 0.010:.6f};{sent - 0.030:.6f};"]
    assert lateness_ms([stream]) == pytest.approx([10.0, 30.0], abs=0.01)

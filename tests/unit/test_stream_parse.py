"""The worker's raw stream reader on the fake upstream's real bytes, cut and re-framed every way, through the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import httpx2
import openai
import pytest

from demo.model import MALFORMED_LINE, REASONING_TEXT, app, chunk_text
from shared.errors import ErrorCode
from shared.jobs import StoredRequest
from worker.stream_parse import DataDecoder, Outcome, Piece, read_chunk
from worker.upstream import UpstreamError, stream_pieces

ANSWER = "héllo 🌍 wörld, 你好"
MODEL = "qwen-plus@chunk=3"


async def _demo_body(model: str = MODEL, answer: str = ANSWER) -> bytes:
    """The bytes demo/model.py sends for one streamed completion, with usage."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as http:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"echo:{answer}"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.content


@pytest.fixture(scope="module")
def body() -> bytes:
    return asyncio.run(_demo_body())


def _decode(chunks: list[bytes]) -> tuple[list[Piece], Outcome, list[bytes]]:
    """Feed the chunks; -> pieces up to [DONE], the outcome, and every event's data (including [DONE])."""
    decoder, outcome = DataDecoder(), Outcome()
    datas = [data for chunk in chunks for data in decoder.feed(chunk)] + decoder.finish()
    pieces: list[Piece] = []
    for data in datas:
        if data == b"[DONE]":
            break
        pieces.extend(read_chunk(data, outcome))
    return pieces, outcome, datas


def _assert_complete(pieces: list[Piece], outcome: Outcome, datas: list[bytes]) -> None:
    assert pieces == [Piece("content", text) for text in chunk_text(ANSWER, 3)]
    assert outcome.finish_reason == "stop"
    assert outcome.usage is not None and outcome.usage["completion_tokens"] == len(chunk_text(ANSWER, 3))
    assert datas[-1] == b"[DONE]"


def _splits(body: bytes) -> list[list[bytes]]:
    return [[body[:cut], body[cut:]] for cut in range(len(body) + 1)]


def test_the_real_stream_in_one_read(body: bytes) -> None:
    _assert_complete(*_decode([body]))


def test_the_real_stream_cut_at_every_byte(body: bytes) -> None:
    for chunks in _splits(body):
        _assert_complete(*_decode(chunks))
    _assert_complete(*_decode([body[i : i + 1] for i in range(len(body))]))


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_crlf_and_cr_line_endings_cut_at_every_byte(body: bytes, ending: bytes) -> None:
    reframed = body.replace(b"\n", ending)
    for chunks in _splits(reframed):
        _assert_complete(*_decode(chunks))


def test_comments_other_fields_and_events_without_data_are_skipped(body: bytes) -> None:
    events = body.split(b"\n\n")
    noisy = b"\n\n".join(b": ping\nevent: chunk\nid: 7\nretry: 100\n" + e if e else e for e in events)
    noisy = b": keep-alive\n\nevent: empty\n\n" + noisy
    for chunks in _splits(noisy):
        _assert_complete(*_decode(chunks))


def test_data_lines_of_one_event_join_with_a_newline() -> None:
    decoder = DataDecoder()
    assert decoder.feed(b'data: {"choices":\ndata:[]}\n') == []
    assert decoder.feed(b"\n") == [b'{"choices":\n[]}']


def test_a_last_line_without_its_ending_still_counts_and_an_unended_event_does_not() -> None:
    decoder = DataDecoder()
    assert decoder.feed(b"data: [DONE]\n\ndata: half") == [b"[DONE]"]
    assert decoder.finish() == []
    decoder = DataDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\r") == []
    assert decoder.finish() == [b"a"]


def test_reasoning_content_becomes_reasoning_pieces() -> None:
    raw = asyncio.run(_demo_body("reasoning@chunk=5", "ok"))
    decoder, outcome = DataDecoder(), Outcome()
    pieces = [p for data in decoder.feed(raw) if data != b"[DONE]" for p in read_chunk(data, outcome)]
    assert "".join(p.text for p in pieces if p.kind == "reasoning") == REASONING_TEXT
    assert "".join(p.text for p in pieces if p.kind == "content") == "ok"
    assert pieces[-1] == Piece("content", "ok")


# --- through the SDK: the request, the status errors and the response's lifetime stay the SDK's -------------


class _Body(httpx2.AsyncByteStream):
    """A response body delivered in the given reads; records whether the client closed it."""

    def __init__(self, chunks: list[bytes], then_wait: bool = False) -> None:
        self.chunks = chunks
        self.then_wait = then_wait
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.then_wait:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed.set()


def _client(respond: Callable[[], httpx2.Response]) -> openai.AsyncOpenAI:
    transport = httpx2.MockTransport(lambda request: respond())
    return openai.AsyncOpenAI(
        base_url="http://provider/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def _sse(stream: _Body) -> Callable[[], httpx2.Response]:
    return lambda: httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


REQUEST = StoredRequest(messages=[{"role": "user", "content": "hi"}], model="m")


async def _stream(chunks: list[bytes]) -> tuple[list[Piece], Outcome]:
    outcome = Outcome()
    pieces = [piece async for piece in stream_pieces(_client(_sse(_Body(chunks))), REQUEST, outcome)]
    return pieces, outcome


async def _failure(chunks: list[bytes]) -> ErrorCode:
    with pytest.raises(UpstreamError) as failed:
        await _stream(chunks)
    return failed.value.code


async def test_stream_pieces_reads_the_real_stream_byte_by_byte(body: bytes) -> None:
    pieces, outcome = await _stream([body[i : i + 1] for i in range(len(body))])
    assert "".join(p.text for p in pieces) == ANSWER
    assert outcome.finish_reason == "stop"
    assert outcome.usage is not None and outcome.usage["completion_tokens"] == len(chunk_text(ANSWER, 3))


async def test_nothing_after_done_is_parsed(body: bytes) -> None:
    pieces, outcome = await _stream([body, b"data: {not json\n\n"])
    assert "".join(p.text for p in pieces) == ANSWER
    assert outcome.finish_reason == "stop"


async def test_malformed_json_is_a_bad_response(body: bytes) -> None:
    events = body.split(b"\n\n")
    broken = b"\n\n".join([*events[:2], MALFORMED_LINE.rstrip(b"\n"), *events[2:]])
    assert await _failure([broken]) is ErrorCode.UPSTREAM_BAD_RESPONSE


@pytest.mark.parametrize(
    "data",
    [b"[1, 2]", b'{"choices": [{"delta": {"content": "x"}}]}', b'{"choices": [{"index": 0, "delta": {"content": 5}}]}'],
    ids=["not-an-object", "no-index", "content-not-text"],
)
async def test_chunks_of_the_wrong_shape_are_a_bad_response(data: bytes) -> None:
    assert await _failure([b"data: " + data + b"\n\ndata: [DONE]\n\n"]) is ErrorCode.UPSTREAM_BAD_RESPONSE


async def test_a_stream_without_finish_reason_is_a_bad_response_even_with_done(body: bytes) -> None:
    start = body.index(b'"finish_reason":"stop"')
    without = body[:start] + b'"finish_reason":null' + body[start + len(b'"finish_reason":"stop"') :]
    assert await _failure([without]) is ErrorCode.UPSTREAM_BAD_RESPONSE
    truncated = body[: body.index(b"data: [DONE]")]
    assert (await _stream([truncated]))[1].finish_reason == "stop"  # finish_reason alone ends the answer
    assert await _failure([body[:start]]) is ErrorCode.UPSTREAM_BAD_RESPONSE


async def test_an_error_object_in_the_stream_is_unavailable(body: bytes) -> None:
    error = b'data: {"error": {"message": "overloaded", "code": "server_busy"}}\n\n'
    assert await _failure([body[: body.index(b"\n\n") + 2], error]) is ErrorCode.UPSTREAM_UNAVAILABLE


async def test_status_errors_stay_the_sdks() -> None:
    client = _client(lambda: httpx2.Response(401, json={"error": {"message": "bad key sk-secret"}}))
    with pytest.raises(UpstreamError) as failed:
        async for _ in stream_pieces(client, REQUEST, Outcome()):
            pass
    assert failed.value.code is ErrorCode.UPSTREAM_AUTH
    assert "sk-secret" not in failed.value.detail


async def test_closing_the_reader_mid_stream_closes_the_upstream_response(body: bytes) -> None:
    two_events = body.index(b"\n\n", body.index(b"\n\n") + 2) + 2
    stream = _Body([body[:two_events]], then_wait=True)
    pieces = stream_pieces(_client(_sse(stream)), REQUEST, Outcome())
    reader = asyncio.ensure_future(anext(pieces))
    assert (await reader).kind == "content"
    waiting = asyncio.ensure_future(anext(pieces))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(stream.closed.wait(), 5)

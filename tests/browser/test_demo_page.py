"""The demo page at / in a real Chromium against the real stack: streams, reattaches after a reload, stops."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
from playwright.async_api import Browser, Page, Route, expect

from cli.embedded_redis import free_port
from demo.model import answer_for
from tests.support.stack import Stack, _get_ok, wait_for

STEADY = "".join(f"[{i:03d}]" for i in range(60))


def expected(prompt: str) -> str:
    return answer_for([{"role": "user", "content": prompt}])


async def send(page: Page, stack: Stack, prompt: str, model: str) -> None:
    await page.goto(f"{stack.api_url}/")
    await page.get_by_test_id("prompt").fill(prompt)
    await page.get_by_test_id("model").fill(model)
    await page.get_by_test_id("send").click()


def generation_id(page: Page) -> str:
    match = re.search(r"[?&]id=([^&#]+)", page.url)
    assert match, f"no generation id in the URL {page.url}"
    return match.group(1)


async def test_the_page_streams_a_full_answer_with_its_timings(page: Page, stack: Stack, tmp_path: Path) -> None:
    prompt = "Tell me about streams"
    await send(page, stack, prompt, "demo@delay_ms=10")
    await expect(page.get_by_test_id("status")).to_have_text("Done", timeout=30_000)
    await expect(page.get_by_test_id("output")).to_have_text(expected(prompt), use_inner_text=False)
    # The page checked what it shows against done's length (in code points) and sha256.
    await expect(page.get_by_test_id("output")).to_have_attribute("data-verified", "true")
    await expect(page.get_by_test_id("ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    await expect(page.get_by_test_id("tps")).to_have_text(re.compile(r"^\d+\.\d$"))
    assert generation_id(page)
    await page.screenshot(path=str(tmp_path / "done.png"), full_page=True)


async def test_a_reload_mid_answer_ends_with_the_exact_answer_once(page: Page, browser: Browser, stack: Stack) -> None:
    resumed_from: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            resumed_from.append(request.headers.get("last-event-id")) if request.url.endswith("/events") else None
        ),
    )
    await send(page, stack, f"echo:{STEADY}", "demo@chunk=3,delay_ms=30")
    output = page.get_by_test_id("output")
    await expect(output).to_have_text(re.compile(r"^\[000\]\[001\]\[002\]"), timeout=30_000)
    await expect(page.get_by_test_id("status")).to_have_text("Streaming")
    await page.reload()
    await expect(page.get_by_test_id("status")).to_have_text("Done", timeout=30_000)
    await expect(output).to_have_text(STEADY, use_inner_text=False)
    await expect(output).to_have_attribute("data-verified", "true")
    # It resumed from the last event it had saved, not by replaying everything from the start.
    assert resumed_from and resumed_from[0] is not None, resumed_from
    # Reloading a finished answer shows it again, as it was.
    await page.reload()
    await expect(page.get_by_test_id("status")).to_have_text("Done")
    await expect(output).to_have_text(STEADY, use_inner_text=False)
    # The link alone (another tab, no saved state) replays the generation from its start: the same answer.
    other = await browser.new_context()
    try:
        fresh = await other.new_page()
        await fresh.goto(page.url)
        await expect(fresh.get_by_test_id("status")).to_have_text("Done", timeout=30_000)
        await expect(fresh.get_by_test_id("output")).to_have_text(STEADY, use_inner_text=False)
    finally:
        await other.close()


async def test_stop_cancels_the_generation(page: Page, stack: Stack, client: httpx.AsyncClient) -> None:
    await send(page, stack, "Go slowly", "demo@delay_ms=150")
    await expect(page.get_by_test_id("output")).not_to_be_empty(timeout=30_000)
    await page.get_by_test_id("stop").click()
    status = page.get_by_test_id("status")
    await expect(status).to_have_text("Cancelled", timeout=15_000)
    record = (await client.get(f"/v1/generations/{generation_id(page)}")).json()
    assert record["status"] == "cancelled"
    # A cancel is an outcome the user chose, not an error: not shown in red.
    assert not is_red(await status.evaluate("element => getComputedStyle(element).color"))
    assert (await page.get_by_test_id("output").text_content()) == record["text"]


async def test_an_error_is_shown_in_red(page: Page, stack: Stack, client: httpx.AsyncClient) -> None:
    await send(page, stack, "Fail please", "status-400")
    status = page.get_by_test_id("status")
    await expect(status).to_have_attribute("data-state", "error", timeout=30_000)
    record = (await client.get(f"/v1/generations/{generation_id(page)}")).json()
    assert record["error"]["code"] == "upstream_bad_request"
    await expect(status).to_have_text(record["error"]["message"])
    assert is_red(await status.evaluate("element => getComputedStyle(element).color"))


def is_red(css_color: str) -> bool:
    match = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, [\d.]+)?\)", css_color)
    assert match, css_color
    red, green, blue = (int(part) for part in match.groups())
    return red >= 150 and green <= 90 and blue <= 90


async def test_an_answer_that_does_not_match_done_is_an_error(page: Page, stack: Stack) -> None:
    # A relay (or a proxy in between) that lost a piece: the page must not present the text as the answer.
    body = (
        'id: 1-0\ndata: {"type":"content","data":"Hello"}\n\n'
        'id: 2-0\ndata: {"type":"done","data":{"finish_reason":"stop","usage":null,"length":11,'
        f'"sha256":"{hashlib.sha256(b"Hello world").hexdigest()}"}}}}\n\n'
    )

    async def lossy(route: Route) -> None:
        headers = {"Content-Type": "text/event-stream", "X-Generation-Id": "gen_lossy"}
        await route.fulfill(status=200, headers=headers, body=body)

    await page.route("**/v1/generations", lossy)
    await send(page, stack, "Hello", "demo")
    status = page.get_by_test_id("status")
    await expect(status).to_have_attribute("data-state", "error", timeout=15_000)
    await expect(status).to_contain_text("characters")
    await expect(page.get_by_test_id("output")).to_have_attribute("data-verified", "false")


async def test_the_api_key_field_is_sent_and_kept_across_a_reload(page: Page, stack: Stack) -> None:
    """Against a relay with SSE_RELAY_API_KEYS: refused without the key, answered with it; the key survives a
    reload (localStorage) and is what the reattach uses."""
    port = free_port()
    env = {**stack.env, "SSE_RELAY_API_KEYS": "page-key"}
    api = stack.start("api-keyed-page", ["-m", "uvicorn", "api.main:app", "--port", str(port)], env=env)
    keyed = Stack(env, f"http://127.0.0.1:{port}", stack.upstream_url, stack.logdir)
    try:
        wait_for(lambda: _get_ok(f"{keyed.api_url}/readyz"), "the keyed API", api)
        await send(page, keyed, "Who am I?", "demo@delay_ms=1")
        status = page.get_by_test_id("status")
        await expect(status).to_have_attribute("data-state", "error", timeout=15_000)
        await page.get_by_test_id("api-key").fill("page-key")
        await page.get_by_test_id("send").click()
        await expect(status).to_have_text("Done", timeout=30_000)
        await expect(page.get_by_test_id("output")).to_have_text(expected("Who am I?"), use_inner_text=False)
        await page.reload()
        await expect(page.get_by_test_id("api-key")).to_have_value("page-key")
        await expect(status).to_have_text("Done", timeout=30_000)
        async with keyed.client(headers={"Authorization": "Bearer page-key"}) as client:
            record = (await client.get(f"/v1/generations/{generation_id(page)}")).json()
        assert record["text"] == expected("Who am I?")
    finally:
        api.stop()

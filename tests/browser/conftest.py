"""Browser fixtures: one headless Chromium for the browser tests (gone before the rest of the suite runs), and
a fresh context (its own storage) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.support.chromium import running_chromium


@pytest.fixture(scope="package")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    with running_chromium(tmp_path_factory.mktemp("chromium")) as endpoint:
        async with async_playwright() as playwright:
            connected = await playwright.chromium.connect_over_cdp(endpoint)
            try:
                yield connected
            finally:
                await connected.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    opened = await context.new_page()
    # Anything the page logs or throws shows up in the test's failure output.
    opened.on("console", lambda message: print(f"[page {message.type}] {message.text}"))
    opened.on("pageerror", lambda error: print(f"[page error] {error}"))
    try:
        yield opened
    finally:
        await context.close()

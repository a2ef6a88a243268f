"""A stack with caller keys on (the SDK's api_key is the caller's key), and official OpenAI SDK clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.support.stack import Stack, running_stack

CALLER_KEY = "sk-relay-caller-" + "0" * 16


@pytest.fixture(scope="package")
def openai_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_url, tmp_path_factory.mktemp("openai-stack"), SSE_RELAY_API_KEYS=CALLER_KEY) as stack:
        yield stack


def sdk(stack: Stack, api_key: str = CALLER_KEY) -> openai.AsyncOpenAI:
    """The official client as an application would configure it; no automatic retries, so a test sees what the
    relay answered the first time."""
    return openai.AsyncOpenAI(base_url=f"{stack.api_url}/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture
async def client(openai_stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(openai_stack) as relay:
        yield relay

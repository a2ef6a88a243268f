"""The seed's browser `fetch` reader, byte for byte, in Node 20 against POST /v1/generations: the exact text."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from demo.model import answer_for
from tests.support.stack import Stack

HERE = Path(__file__).parent


def test_seed_browser_example_assembles_the_exact_text(stack: Stack) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the seed test (it is on every machine of this project)"
    result = subprocess.run(
        [node, str(HERE / "run_seed.mjs"), stack.api_url], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    # The seed posts {"prompt": "Hello"} as text/plain with no system prompt; the demo model answers it.
    assert page["text"] == answer_for([{"role": "user", "content": "Hello"}])
    assert ["log", "Stream completed"] in page["logs"]
    assert not [entry for entry in page["logs"] if entry[0] == "error"]

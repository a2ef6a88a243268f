"""Hostile bodies through the real server: refused with a clear 422 before anything is stored, never a 500 later."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "é🌍"}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "hi", "background": true, "metadata": {"x": "\\udfff"}}',
        b'{"prompt": "\\udfff", "background": true}',
        b'{"messages": [{"role": "user", "content": "\\ud800"}], "background": true}',
        b'{"prompt": "hi", "background": true, "metadata": {"x": NaN}}',
        b'{"prompt": "hi", "background": true, "metadata": {"x": -Infinity}}',
        b'{"prompt": "hi", "background": true, "metadata": {"x": 1e999}}',
        json.dumps({"prompt": "hi", "background": True, "metadata": _nested(300)}).encode(),
    ],
    ids=["surrogate-metadata", "surrogate-prompt", "surrogate-message", "nan", "-infinity", "overflow", "300-deep"],
)
async def test_unstorable_bodies_are_422(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/v1/generations", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


async def test_metadata_at_its_limits_is_stored_and_read_back(client: httpx.AsyncClient) -> None:
    metadata = {"deep": _nested(15), "text": "数据 🐘 \u2028", "n": [0, -1.5, 10**18], "none": None}
    created = await client.post("/v1/generations", json={"prompt": "echo:ok", "background": True, "metadata": metadata})
    assert created.status_code == 202, created.text
    url = created.json()["url"]
    async with client.stream("GET", created.json()["events_url"]) as events:
        await events.aread()
    for _ in range(2):  # the live view, then (once finished) the stored one
        view = await client.get(url)
        assert view.status_code == 200, view.text
        assert view.json()["metadata"] == metadata


async def test_json_sent_as_a_form_by_curl_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/generations",
        content=b'{"prompt": "echo:curl", "background": true}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202, response.text

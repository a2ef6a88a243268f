"""`cost`'s baseline, a plain asyncio loop over the SDK: `python -m bench.sdk_loop URL MODEL PROMPT N [aiohttp]`."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import openai
import uvloop


async def _one(client: openai.AsyncOpenAI, model: str, prompt: str) -> tuple[int, bool]:
    chunks, finished = 0, False
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                chunks += 1
            finished = finished or choice.finish_reason is not None
    return chunks, finished


async def main(url: str, model: str, prompt: str, streams: int, aiohttp: bool) -> dict[str, float]:
    http_client = openai.DefaultAioHttpClient() if aiohttp else None
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-bench-not-a-secret", max_retries=0, http_client=http_client)
    await asyncio.gather(*(_one(client, model, prompt) for _ in range(min(streams, 20))))  # warm-up
    cpu, wall = time.process_time(), time.monotonic()
    results = await asyncio.gather(*(_one(client, model, prompt) for _ in range(streams)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    await client.close()
    tokens = sum(chunks for chunks, _ in results)
    ok = sum(1 for _, finished in results if finished)
    return {"tokens": tokens, "ok": ok, "cpu_s": cpu, "wall_s": wall, "tokens_per_cpu_s": tokens / cpu}


if __name__ == "__main__":
    url, model, prompt, streams, aiohttp = *sys.argv[1:4], int(sys.argv[4]), sys.argv[5:] == ["aiohttp"]
    # The worker runs on uvloop too: the comparison is of the code, not of the event loop.
    print(json.dumps(uvloop.run(main(url, model, prompt, streams, aiohttp))), flush=True)

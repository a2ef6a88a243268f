"""The seed's "full example (with callbacks)", in Python: hooks run on the worker, once per generation."""

import os

from fastapi import FastAPI
from fastapi.responses import Response

from api.helper import handle_openai_stream
from examples.story_hooks import log_chunk, save_story

app = FastAPI()


@app.post("/api/weaver/generate")
async def generate() -> Response:
    messages = [
        {"role": "system", "content": "System prompt..."},
        {"role": "user", "content": "User input..."},
    ]
    return handle_openai_stream(
        messages,
        model=os.environ.get("QWEN_MODEL_NAME", "qwen-plus"),
        temperature=0.7,
        error_context="My Feature",
        on_content=log_chunk,
        on_complete=save_story,
    )

"""The seed's "basic use", in Python: a route of your own that streams a completion."""

from fastapi import FastAPI, Request
from fastapi.responses import Response

from api.helper import build_messages, handle_openai_stream, relay_read_router

app = FastAPI()
# The relay's read routes: the `Location` each answer carries (/v1/generations/<id>) resolves here, so a
# client can resume (GET .../events with Last-Event-ID), read the result or cancel.
app.include_router(relay_read_router())


@app.post("/api/my-endpoint")
async def my_endpoint(request: Request) -> Response:
    body = await request.json()
    messages = build_messages(body["prompt"], "You are a helpful assistant")
    return handle_openai_stream(messages, model="qwen-plus", temperature=0.7)

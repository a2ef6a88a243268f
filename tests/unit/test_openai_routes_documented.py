"""The OpenAPI document lists the OpenAI-compatible routes and their request bodies (and so the fuzzer covers them)."""

from __future__ import annotations

from api.main import create_app


def test_the_openai_routes_and_bodies_are_in_the_openapi_document() -> None:
    document = create_app().openapi()
    paths = document["paths"]
    assert "post" in paths["/v1/chat/completions"] and "post" in paths["/v1/responses"]
    assert "get" in paths["/v1/responses/{generation_id}"] and "post" in paths["/v1/responses/{generation_id}/cancel"]
    schemas = document["components"]["schemas"]
    assert {"messages", "stream", "stream_options", "max_completion_tokens"} <= set(
        schemas["ChatCompletionCreate"]["properties"]
    )
    assert {"input", "instructions", "background", "max_output_tokens"} <= set(schemas["ResponseCreate"]["properties"])
    body = paths["/v1/responses"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ResponseCreate"}

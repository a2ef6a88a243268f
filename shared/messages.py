"""Building the chat message list from a prompt (the seed's `buildMessages`)."""

from __future__ import annotations

from typing_extensions import TypedDict


class ChatMessage(TypedDict):
    role: str
    content: str


def build_messages(prompt: str, system: str | None = None) -> list[ChatMessage]:
    """`[system?, user]`, as the seed's helper builds them."""
    messages: list[ChatMessage] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages

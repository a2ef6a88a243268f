"""Between the Redis stream and the OpenAI formats: our events as append-only text, since neither Chat Completions
nor Responses can tell a client to discard what it holds (our `reset`).

The rule: a client keeps every piece it was sent. After a `reset` (a worker retry restarting the text), the new
attempt's text is held back until it either extends what was sent, and then only the new suffix goes out, or
departs from it, and then the stream ends with `generation_restarted` (the final result stays retrievable by
id). A deterministic provider (temperature 0, an echo) usually continues seamlessly; a sampling one ends the
stream, which the client retries. The same applies to reasoning text, channel by channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Channel = Literal["content", "reasoning"]
_CHANNELS: tuple[Channel, ...] = ("content", "reasoning")


@dataclass(frozen=True, slots=True)
class Piece:
    """Text to send: it extends what this client already holds."""

    channel: Channel
    text: str


@dataclass(frozen=True, slots=True)
class End:
    """The stream's last output: our terminal event (`done` or `error`), or None when a retry's text departed
    from what was sent (`restarted`)."""

    event: dict[str, Any] | None

    @property
    def restarted(self) -> bool:
        return self.event is None


Output = Piece | End


@dataclass(slots=True)
class Continuity:
    """Feeds our events in stream order; yields what a no-reset client may be sent."""

    sent: dict[Channel, str] = field(default_factory=lambda: {"content": "", "reasoning": ""})
    # Per channel, the text of the attempt after a `reset`, while it is still within what was sent.
    held: dict[Channel, str | None] = field(default_factory=lambda: {"content": None, "reasoning": None})
    ended: bool = False

    def feed(self, event: dict[str, Any]) -> list[Output]:
        if self.ended:
            return []
        kind = event.get("type")
        if kind == "reset":
            self.held = {"content": "", "reasoning": ""}
            return []
        if kind == "content" or kind == "reasoning":
            return self._piece(kind, str(event.get("data") or ""))
        self.ended = True
        if kind == "done" and any(self.held[c] is not None and self.held[c] != self.sent[c] for c in _CHANNELS):
            # The retry ended short of what this client was sent.
            return [End(None)]
        return [End(event)]

    def _piece(self, channel: Channel, text: str) -> list[Output]:
        if not text:
            return []
        held = self.held[channel]
        if held is None:
            self.sent[channel] += text
            return [Piece(channel, text)]
        held += text
        sent = self.sent[channel]
        if len(held) <= len(sent):
            if not sent.startswith(held):
                self.ended = True
                return [End(None)]
            self.held[channel] = held
            return []
        if not held.startswith(sent):
            self.ended = True
            return [End(None)]
        # The retry caught up with what was sent: from here on it is an ordinary stream again.
        self.held[channel] = None
        self.sent[channel] = held
        return [Piece(channel, held[len(sent) :])]

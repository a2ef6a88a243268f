"""sse-relay's test suite: unit tests (fast, fakeredis allowed) and integration tests (real processes)."""

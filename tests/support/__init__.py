"""Helpers shared by the tests: real services, real processes, an SSE reader."""

"""Integration tests: real uvicorn and arq processes, real Redis, the fake OpenAI upstream over HTTP."""

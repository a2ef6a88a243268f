"""The OpenAI-compatible formats (Chat Completions, Responses) built over the generations and their streams."""

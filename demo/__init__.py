"""The local demo/fake model: the OpenAI-compatible upstream the worker streams from when no key is set."""

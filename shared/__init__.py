"""Code used by both the API and the worker: settings, event models, Redis keys and stream helpers."""

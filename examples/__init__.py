"""The seed's examples, ported to Python: routes of your own that use handle_openai_stream."""

"""The `sse-relay` console script: the all-in-one development runner and its helpers."""

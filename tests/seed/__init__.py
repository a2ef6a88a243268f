"""The seed's own browser client, run unchanged against sse-relay."""

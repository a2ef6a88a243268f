"""The HTTP API: accepts generations, enqueues them, and serves their Redis streams as Server-Sent Events."""

"""Hooks for the seed's full example; they run on the worker (list this module in SSE_RELAY_HOOK_MODULES)."""

from shared.hooks import GenerationInfo, hook


@hook
def log_chunk(chunk: str) -> None:
    # optional: record metrics
    print("Received chunk:", len(chunk), flush=True)


@hook
async def save_story(text: str, generation: GenerationInfo) -> None:
    # optional: save to a database, trigger post-processing, etc. (generation.id makes it idempotent)
    print("Generation completed:", len(text), "chars", generation.id, flush=True)

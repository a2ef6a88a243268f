"""Building and closing an API process's connections (used by the app's lifespan and by api.helper)."""

from __future__ import annotations

from api.deps import Services
from api.enqueue import Enqueuer
from api.stream_hub import StreamHub
from shared.config import Settings
from shared.hooks import load_registry
from shared.redis_client import queue_client, streams_client
from shared.state import Generations
from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.repository import ResultStore

# Bounded pools: a burst of requests waits for a connection instead of opening one per concurrent command.
# Every command the API sends is one short round trip (the stream hub's reads and wake-ups have their own
# connections: one per shard and one), and one event loop cannot keep more than a few in flight usefully; so
# a handful per process, whatever the load: 5 + 2 here, 3 in the hub with the default 2 shards.
STREAMS_CONNECTIONS = 5
QUEUE_CONNECTIONS = 2


async def open_services(settings: Settings, migrate: bool | None = None) -> Services:
    streams = streams_client(settings, max_connections=STREAMS_CONNECTIONS)
    queue = queue_client(settings, settings.queue_name, QUEUE_CONNECTIONS)
    engine = make_engine(settings.database_url)
    if settings.auto_migrate if migrate is None else migrate:
        await upgrade(engine)
    generations = Generations(streams, settings)
    hub = StreamHub(settings, streams, settings.reader_shards)
    hub.start()
    return Services(
        settings=settings,
        streams=streams,
        generations=generations,
        queue=queue,
        store=ResultStore(engine),
        # The API resolves hook names too, to refuse an unknown one (422) before anything is enqueued.
        hooks=load_registry(settings.hook_modules, settings.hooks),
        enqueuer=Enqueuer(generations, queue, same_server=settings.streams_url == settings.redis_url),
        hub=hub,
    )


async def close_services(services: Services) -> None:
    if services.hub is not None:
        await services.hub.stop()
    await services.queue.aclose()
    await services.streams.aclose()
    await services.store.engine.dispose()

"""`sse-relay worker`: runs the worker process (worker/relay.py's RelayWorker with worker/main.py's settings)."""

from __future__ import annotations

import logging

from arq.worker import check_health


def run(check: bool = False) -> int:
    """Like `arq worker.main.WorkerSettings` (and `arq --check ...` for `check`), with the relay's Worker.

    Imported here, not at the top: the worker's modules set up a process (uvloop) that other commands don't want.
    """
    from shared.config import get_settings
    from shared.logging import configure_logging
    from worker.main import relay_worker, settings_type

    configure_logging(get_settings(), logging.INFO)
    if check:
        return check_health(settings_type())
    # arq's signal handling as in its run_worker: SIGTERM/SIGINT stop picking up jobs, give the running ones
    # WORKER_SHUTDOWN_GRACE_S, cancel (re-queue) the rest, then on_shutdown.
    relay_worker().run()
    return 0

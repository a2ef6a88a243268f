"""Worker-side hooks (`on_content`, `on_complete`): registered by name, resolved on both API and worker.

Names come only from configuration, never from a request: a request may name a hook, but only one that the
operator registered, so no request can make a process import or call arbitrary code.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

_DECORATED: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True, slots=True)
class GenerationInfo:
    """The `generation` argument of `on_complete(text, generation)`."""

    id: str
    model: str
    status: str
    text: str
    reasoning: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    metadata: dict[str, Any]
    created_at: datetime
    finished_at: datetime
    attempt: int


@overload
def hook(name: F) -> F: ...


@overload
def hook(name: str | None = None) -> Callable[[F], F]: ...


def hook(name: str | Callable[..., Any] | None = None) -> Any:
    """Register a hook: `@hook` (named after the function) or `@hook("save_story")`.

    The function is registered under its name and under `module:function`.
    """

    def register(fn: F, alias: str | None = None) -> F:
        for key in {alias or fn.__name__, f"{fn.__module__}:{fn.__qualname__}"}:
            _DECORATED[key] = fn
        return fn

    if callable(name):
        return register(name)
    return lambda fn: register(fn, name)


class UnknownHook(LookupError):
    pass


@dataclass(frozen=True)
class HookRegistry:
    hooks: dict[str, Callable[..., Any]]

    def resolve(self, name: str) -> Callable[..., Any]:
        try:
            return self.hooks[name]
        except KeyError:
            raise UnknownHook(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self.hooks

    def name_of(self, fn: Callable[..., Any] | str) -> str:
        """A hook given as a function (the seed's style) -> its registered name."""
        if isinstance(fn, str):
            self.resolve(fn)
            return fn
        for key, registered in self.hooks.items():
            if registered is fn and ":" in key:
                return key
        raise UnknownHook(
            f"{getattr(fn, '__qualname__', fn)!r} is not a registered hook: decorate it with @hook in a module "
            "listed in SSE_RELAY_HOOK_MODULES (hooks run on the worker, so they must be importable there)"
        )


def load_registry(modules: list[str], functions: list[str]) -> HookRegistry:
    """Import the configured hook modules (their @hook decorators register) and `module:function` entries."""
    for module in modules:
        importlib.import_module(module)
    hooks = dict(_DECORATED)
    for spec in functions:
        module_name, _, attribute = spec.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"hook {spec} is not callable")
        hooks[spec] = target
    return HookRegistry(hooks)


class HookThreads:
    """The threads sync hooks run in: a bounded pool of their own (HOOK_THREADS per worker process).

    Not the event loop's default executor: that one has a handful of threads (cores + 4) and also resolves the
    provider's host name for every new connection, so a few slow hooks there would hold up every generation.
    """

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sse-relay-hook")

    async def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Await an async hook; run a sync one in a hook thread (with the caller's context variables)."""
        if inspect.iscoroutinefunction(fn):
            await fn(*args)
            return
        context = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, partial(context.run, fn, *args))
        if inspect.isawaitable(result):
            await result

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

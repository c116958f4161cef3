"""Which plugins run for a request, in which order: built once per route when a config is compiled.

Scoping follows Kong: a plugin entity applies globally, or to a service, a route, a consumer, or a combination. For a
request, each plugin *name* runs once, with its most specific entity, in Kong's order of precedence:

    consumer + route + service > consumer + route > consumer + service > route + service > consumer > route
    > service > global

The consumer is known only once an auth plugin has run, so a route's ``Chain`` is built without consumer-scoped
entities; when the config has some, ``Chain.for_consumer`` gives (and caches) the chain for a consumer, and the
proxy switches to it for the plugins after the one that authenticated (as Kong re-reads its plugins after access).

A chain holds, per phase, only the bound methods of plugins that have that phase, so a request never calls a no-op.
Compiled with the proxy (setup.py): the proxy reads a chain's phases for every request of a route with plugins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import BuildEnv, Plugin, implements


@dataclass(frozen=True, eq=False)
class Scoped:
    """A built plugin with what its entity is scoped to (config objects, compared by identity; None: any)."""

    plugin: Plugin
    service: Any = None
    route: Any = None
    consumer: Any = None  # a Consumer (runtime object)

    @property
    def rank(self) -> int:
        c, r, s = self.consumer is not None, self.route is not None, self.service is not None
        if c:
            return 8 if r and s else 7 if r else 6 if s else 4
        return 5 if r and s else 3 if r else 2 if s else 1


class Chain:
    """The plugins of one route (and consumer), per phase, in run order."""

    __slots__ = ("plugins", "access", "request_body", "header_filter", "response_body", "log", "buffers_request",
                 "buffers_response", "priorities", "_candidates", "_by_consumer", "consumer_scoped")

    def __init__(self, plugins: list[Plugin], candidates: tuple[Scoped, ...] = (), consumer_scoped: bool = False):
        plugins = sorted(plugins, key=lambda p: (-p.priority, p.name))
        self.plugins = tuple(plugins)
        self.priorities = tuple(p.priority for p in plugins)
        self.access: tuple[tuple[int, Any], ...] = tuple(
            (p.priority, p.access) for p in plugins if implements(p, "access"))  # type: ignore[attr-defined]
        self.request_body = tuple(p.request_body for p in plugins  # type: ignore[attr-defined]
                                  if implements(p, "request_body") and _flag(p, "buffers_request"))
        self.header_filter = tuple(p.header_filter for p in reversed(plugins)  # type: ignore[attr-defined]
                                   if implements(p, "header_filter"))
        self.response_body = tuple(p for p in reversed(plugins)
                                   if implements(p, "response_body") and _flag(p, "buffers_response"))
        self.log = tuple(p.log for p in plugins if implements(p, "log"))  # type: ignore[attr-defined]
        self.buffers_request = bool(self.request_body)
        self.buffers_response = bool(self.response_body)
        self._candidates = candidates
        self._by_consumer: dict[int, Chain] = {}
        self.consumer_scoped = consumer_scoped  # some plugin entity of this route is scoped to a consumer

    def for_consumer(self, consumer: Any) -> Chain:
        """The chain for requests of ``consumer`` (cached per consumer)."""
        chain = self._by_consumer.get(id(consumer))
        if chain is None:
            chain = Chain(_select(self._candidates, consumer), self._candidates, False)
            self._by_consumer[id(consumer)] = chain
        return chain


def _flag(p: Plugin, name: str) -> bool:
    """The instance's value wins over the class's (a plugin may buffer only for some configs)."""
    return bool(getattr(p, name, False))


def _select(candidates: tuple[Scoped, ...], consumer: Any) -> list[Plugin]:
    best: dict[str, Scoped] = {}
    for c in candidates:
        if c.consumer is not None and c.consumer is not consumer:
            continue
        name = c.plugin.name
        cur = best.get(name)
        if cur is None or c.rank > cur.rank:
            best[name] = c
    return [c.plugin for c in best.values()]


def route_chain(all_plugins: list[Scoped], route: Any, service: Any) -> Chain | None:
    """The chain of ``route`` (of ``service``): None when no plugin applies, so such routes pay nothing."""
    candidates = tuple(
        s for s in all_plugins
        if (s.route is None or s.route is route) and (s.service is None or s.service is service)
    )
    if not candidates:
        return None
    consumer_scoped = any(s.consumer is not None for s in candidates)
    chosen = _select(tuple(s for s in candidates if s.consumer is None), None)
    if not chosen and not consumer_scoped:
        return None
    return Chain(chosen, candidates, consumer_scoped)


def build_plugin(cls: type[Plugin], config: dict[str, Any], env: BuildEnv) -> Plugin:
    return cls(cls.Config.model_validate(config), env)

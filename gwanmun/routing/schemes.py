"""Kong 3.x's protocol rule for http and https routes, on top of ``Router``.

Kong's ``traditional_compatible`` router adds ``net.protocol == ...`` to every route except those whose only
protocol is ``https`` (``kong/router/transform.lua``, "give the chance for http redirection"). So:

* a plain-http request matches routes for ``http``, for ``http`` and ``https``, and for ``https`` only (the proxy
  then answers 426 or redirects: ``https_redirect_status_code``);
* an https request matches routes for ``https`` or for both, never an ``http``-only route.

``build_router`` returns a plain ``Router`` when no route is http-only (the usual case: the default is both), so
requests pay nothing; otherwise a ``SchemeRouter`` that keeps a second router, without the http-only routes, for
https requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .router import RouteEntry, RouteMatch, Router

__all__ = ["SchemeRouter", "build_router"]


class SchemeRouter:
    """Two routers: all routes for http requests, the routes that allow https for https requests."""

    __slots__ = ("http", "https", "uses_headers", "match_cached")

    def __init__(self, http: Router, https: Router) -> None:
        self.http = http
        self.https = https
        self.uses_headers = http.uses_headers or https.uses_headers
        self.match_cached = None  # the proxy's shortcut to one cached matcher does not apply: it calls match()

    def match(self, method: str, host: str, path: str, scheme: str = "http",
              headers: Mapping[str, list[str]] | None = None,
              server_port: int | None = None) -> RouteMatch | None:
        router = self.https if scheme == "https" else self.http
        return router.match(method, host, path, scheme, headers, server_port)

    def __len__(self) -> int:
        return len(self.http)


def build_router(entries: Sequence[RouteEntry]) -> Router | SchemeRouter:
    """A router for ``entries`` that applies Kong's protocol rule (see the module docstring)."""
    router = Router(entries)
    https_entries = [e for e in entries if "https" in e.protocols]
    if len(https_entries) == len(entries):
        return router
    return SchemeRouter(router, Router(https_entries))

"""Request routing with Kong 3.x ``traditional_compatible`` semantics."""

from .paths import upstream_path
from .router import RouteEntry, RouteMatch, Router, requires_https, route_priority

__all__ = ["RouteEntry", "RouteMatch", "Router", "requires_https", "route_priority", "upstream_path"]

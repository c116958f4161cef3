"""Plugin classes by name: the built-in ones, and third-party ones found through the ``gwanmun.plugins`` entry-point
group (an ordinary Python package declares ``[project.entry-points."gwanmun.plugins"] my-plugin =
"my_pkg.module:MyPlugin"``; see docs/plugins.md and examples/plugins/).

Classes are imported on first use, so a config that uses three plugins imports three modules.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from .base import Plugin

log = logging.getLogger("gwanmun.plugins")

ENTRY_POINT_GROUP = "gwanmun.plugins"

# name -> "module" in this package; the module holds exactly one Plugin subclass with that name
BUILTIN: dict[str, str] = {
    "correlation-id": "correlation_id",
    "cors": "cors",
    "jwt": "jwt",
    "key-auth": "key_auth",
    "basic-auth": "basic_auth",
    "passport": "passport",
    "ip-restriction": "ip_restriction",
    "acl": "acl",
    "request-size-limiting": "request_size_limiting",
    "request-transformer": "request_transformer",
    "response-transformer": "response_transformer",
    "request-termination": "request_termination",
    "rate-limiting": "rate_limiting",
    "limit-conn": "limit_conn",
}

_loaded: dict[str, type[Plugin]] = {}
_external: dict[str, object] | None = None


class PluginLoadError(Exception):
    pass


def _entry_points() -> dict[str, object]:
    global _external
    if _external is None:
        _external = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _external


def names() -> list[str]:
    """Every plugin name that can be configured."""
    return sorted({*BUILTIN, *_entry_points()})


def get(name: str) -> type[Plugin] | None:
    """The plugin class for ``name``, or None if there is no such plugin. Raises ``PluginLoadError`` when a
    third-party plugin fails to import or is not a proper plugin class."""
    cls = _loaded.get(name)
    if cls is not None:
        return cls
    module = BUILTIN.get(name)
    if module is not None:
        mod = importlib.import_module(f"{__package__}.{module}")
        found = [c for c in vars(mod).values()
                 if isinstance(c, type) and issubclass(c, Plugin) and c is not Plugin and c.name == name]
        if len(found) != 1:
            raise PluginLoadError(f"built-in plugin module {module} does not define plugin '{name}' exactly once")
        cls = found[0]
    else:
        ep = _entry_points().get(name)
        if ep is None:
            return None
        try:
            cls = ep.load()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - any import error of third-party code
            raise PluginLoadError(f"plugin '{name}' ({ep.value}) failed to import: {exc}") from exc  # type: ignore[attr-defined]
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginLoadError(f"plugin '{name}' ({ep.value}) is not a gwanmun.plugins.Plugin subclass")  # type: ignore[attr-defined]
        if cls.name != name:
            raise PluginLoadError(f"plugin '{name}' ({ep.value}) calls itself '{cls.name}'")  # type: ignore[attr-defined]
    _loaded[name] = cls
    return cls

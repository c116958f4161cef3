"""The config layer: Kong 3.x declarative config (plus gwanmun's ``gateway:`` block) -> validated, frozen models.

Typical use::

    from gwanmun.config import load_file
    loaded = load_file("kong.yml")        # raises gwanmun.errors.ConfigError listing every problem
    for route, service in loaded.config.all_routes():
        ...

See docs/config.md for every field.
"""

from .load import LoadedConfig, config_hash, load_data, load_file, load_text
from .model import (
    DeclarativeConfig,
    GatewayConfig,
    HealthchecksConfig,
    RegexError,
    RouteConfig,
    ServiceConfig,
    TargetConfig,
    UpstreamConfig,
    compile_header_regex,
    compile_path_regex,
    parse_host_port,
    translate_regex,
)

__all__ = [
    "DeclarativeConfig",
    "GatewayConfig",
    "HealthchecksConfig",
    "LoadedConfig",
    "RegexError",
    "RouteConfig",
    "ServiceConfig",
    "TargetConfig",
    "UpstreamConfig",
    "compile_header_regex",
    "compile_path_regex",
    "config_hash",
    "load_data",
    "load_file",
    "load_text",
    "parse_host_port",
    "translate_regex",
]

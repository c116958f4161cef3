"""Plugins: phases with priorities, scoped to global, service, route or consumer (docs/plugins.md).

The public surface for plugin authors is re-exported here.
"""

from .base import BuildEnv, Consumer, Credential, Ctx, Headers, Plugin, PluginConfig, Reply, Response

__all__ = ["BuildEnv", "Consumer", "Credential", "Ctx", "Headers", "Plugin", "PluginConfig", "Reply", "Response"]

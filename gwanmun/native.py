"""Which data-plane modules run compiled (mypyc), and whether a compiled one is older than its source.

An editable install keeps importing the compiled ``.so`` of a module even after its ``.py`` is edited; this is how
that is noticed (``gwanmun version`` and the start-up log report it).
"""

from __future__ import annotations

import importlib
import os

HOT_MODULES = (
    "gwanmun.proxy",
    "gwanmun.http.downstream",
    "gwanmun.http.wire",
    "gwanmun.http.normalize",
    "gwanmun.http.validate",
    "gwanmun.observability.accesslog",
    "gwanmun.observability.recorder",
    "gwanmun.upstream.connection",
    "gwanmun.upstream.pool",
    "gwanmun.upstream.balancer",
    "gwanmun.routing.paths",
    "gwanmun.resilience.breaker",
    "gwanmun.resilience.retry",
    "gwanmun.resilience.bulkhead",
    "gwanmun.resilience.fallback",
    "gwanmun.resilience.registry",
    "gwanmun.plugins.context",
    "gwanmun.plugins.chain",
    "gwanmun.plugins.fastpath",
    "gwanmun.ratelimit.algorithms",
    "gwanmun.ratelimit.periods",
    "gwanmun.ratelimit.shared",
    "gwanmun.ratelimit.local",
)


def status() -> tuple[list[str], list[str]]:
    """(compiled modules, compiled modules whose .py source is newer than the compiled file)."""
    compiled, stale = [], []
    for name in HOT_MODULES:
        mod = importlib.import_module(name)
        path = getattr(mod, "__file__", "") or ""
        if not path.endswith((".so", ".pyd")):
            continue
        compiled.append(name)
        source = os.path.join(os.path.dirname(path), name.rsplit(".", 1)[1] + ".py")
        try:
            if os.path.getmtime(source) > os.path.getmtime(path):
                stale.append(name)
        except OSError:
            pass
    return compiled, stale

"""The error log's line for an upstream failure: why the gateway answered a request itself (502, 503, 504) or cut
it, with the request's id, route, service and upstream as fields, so the reason can be found by request id from the
access log (``"error"``) or filtered by service.

The line is one JSON object on stderr like every operational event (``server.JsonFormatter``)::

    {"level": "warning", "logger": "gwanmun.proxy", "event": "upstream_failed", "request_id": "...",
     "message": "request ...: An invalid response was received from the upstream server (connect to
     127.0.0.1:9 failed: Connection refused)", "status": 502, "reason": "connect to 127.0.0.1:9 failed:
     Connection refused", "service": "orders", "route": "orders-api", "upstream": "127.0.0.1:9", ...}

The reason never includes request fields (no headers, no query): nothing a client sent as a secret is logged.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gwanmun.proxy")


def _name(entity: Any) -> str | None:
    if entity is None:
        return None
    return entity.name or entity.id


def upstream_failed(ex: Any, status: int, message: str, detail: str, fallback: bool = False) -> None:
    """Log why a request failed upstream (``detail``); ``fallback``: the service's fallback answered instead."""
    target = ex.target
    fields: dict[str, Any] = {
        "event": "upstream_failed",
        "request_id": ex.request_id,
        "status": status,
        "reason": detail,
        "service": _name(ex.service),
        "route": _name(ex.route),
        "upstream": target.label if target is not None else None,
        "method": ex.method,
        "path": ex.path,
        "client_ip": ex.client_ip,
    }
    if ex.tries:
        fields["retries"] = ex.tries
    if fallback:
        fields["fallback"] = True
    suffix = "; fallback used" if fallback else ""
    log.warning("request %s: %s (%s)%s", ex.request_id, message, detail, suffix, extra={"fields": fields})

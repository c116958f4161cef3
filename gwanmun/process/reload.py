"""What a reload does with a config file before any worker sees it, and what it cannot change.

- ``prepare``: load, validate and compile a candidate config, and check what validation alone cannot (that the
  access log can be opened). Raises ``ConfigError`` with file, line and field path, as ``gwanmun validate`` shows.
- ``RESTART_FIELDS`` / ``LIVE_FIELDS``: every ``gateway:`` field is in exactly one of them (a unit test checks it,
  so a new field must be classified). A reload applies the live ones and reports the others as "needs restart".
- ``ConfigWatcher``: polls the file's stat and content hash.
- ``config_source``: with the Admin API on, the control plane supplies the entities (see ``prepare``).
"""

from __future__ import annotations

import hashlib
import os
import time

from ..config import LoadedConfig, load_file
from ..config.compile import compile_runtime
from ..errors import ConfigError, ConfigIssue
from ..runtime import Runtime
from . import pidfile

# gateway fields a reload cannot change, and why; their running values stay until the gateway is restarted
RESTART_FIELDS = {
    "listen": "listeners are bound once, when the gateway starts, and never closed by a reload",
    "workers": "the number of worker processes is fixed when the gateway starts",
    "pid_file": "the pid file is written when the gateway starts",
    "admin": "the Admin API's listeners, its tokens and the config store are set up when the gateway starts",
    "status_listen": "the status listener (/metrics, /status, the dashboard) is bound once, by the supervisor",
}

# gateway fields a reload applies, and how
LIVE_FIELDS = {
    "trusted_ips": "new connections",
    "passport": "new requests (signing keys, issuer and the JWKS served)",
    "request_id_header": "new requests",
    "via_header": "new requests",
    "max_request_line": "new connections",
    "max_header_size": "new connections",
    "max_headers": "new connections",
    "keepalive_timeout": "new connections; idle connections at their next idle check",
    "client_header_timeout": "the next time a connection's timer is armed (read from the current settings)",
    "client_body_timeout": "the next time a connection's timer is armed (read from the current settings)",
    "max_connections": "new connections (checked against the current settings when one is accepted)",
    "access_log": "reopened by each worker if the destination changed",
    "access_log_format": "each worker reopens its access log with the new format",
    "access_log_fields": "each worker reopens its access log with the new fields",
    "access_log_rotate": "each worker reopens its access log with the new limits",
    "log_redact": "each worker reopens its access log with the new redaction lists",
    "tracing": "each worker rebuilds its tracer and exporter (spans queued for the old one are flushed first)",
    "upstream_keepalive_pool_size": "every pool, in place (warm connections are kept)",
    "upstream_keepalive_max_requests": "every pool, in place",
    "upstream_keepalive_idle_timeout": "every pool, in place",
    "dns_hostsfile": "the DNS resolver is rebuilt (its cache starts empty)",
    "dns_resolver": "the DNS resolver is rebuilt",
    "dns_stale_ttl": "the DNS resolver is rebuilt",
    "dns_not_found_ttl": "the DNS resolver is rebuilt",
    "dns_error_ttl": "the DNS resolver is rebuilt",
    "dns_valid_ttl": "the DNS resolver is rebuilt",
    "shutdown_timeout": "the next shutdown",
    "config_watch_interval": "the supervisor's next poll",
    # request normalisation (gwanmun/http/normalize.py), compiled into the runtime's settings
    "underscores_in_headers": "new requests",
    "merge_slashes": "new requests",
    "escaped_slashes": "new requests",
    # HTTPS listeners (gwanmun/tls.py): each handshake takes its certificate and settings from the current runtime
    "ssl_cert": "new TLS handshakes",
    "ssl_cert_key": "new TLS handshakes",
    "ssl_cipher_suite": "new TLS connections",
    "ssl_protocols": "new TLS connections",
    "ssl_ciphers": "new TLS connections",
}


def resolve_workers(value: int | str) -> int:
    """``auto``: the CPUs this process may run on (so ``taskset`` and cpusets count), else the number given."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    return int(value)


# Where the entities come from when the Admin API is on (``gateway.admin``): the control plane
# (gwanmun.admin.control.ControlPlane) sets this. Its ``combine(loaded)`` takes the config file as loaded (the node's
# ``gateway:`` settings) and returns the config to serve: those settings with the entities of the store's current
# version. None: the file alone, as without an Admin API.
config_source = None


def prepare(path: str) -> tuple[LoadedConfig, Runtime]:
    """Load, validate and compile ``path``; check that its access log can be opened. Raises ``ConfigError``."""
    loaded = load_file(path)
    source = config_source
    if source is not None:
        loaded = source.combine(loaded)
    runtime = compile_runtime(loaded)
    dest = loaded.config.gateway.access_log
    if dest not in ("stdout", "stderr", "off"):
        try:
            os.close(os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as e:
            where = ("gateway", "access_log")
            raise ConfigError([ConfigIssue(where, f"cannot open '{dest}': {e.strerror or e}", loaded.source,
                                           loaded.lines.get(where))]) from None
    return loaded, runtime


def effective(gw, name: str):
    """The value of restart field ``name`` as the gateway uses it (``workers: auto`` is a number, ``pid_file``
    a path)."""
    if name == "workers":
        return resolve_workers(gw.workers)
    if name == "pid_file":
        return pidfile.resolve(gw.pid_file)
    return getattr(gw, name)


def restart_needed(running, new, overrides: dict) -> dict[str, dict]:
    """The restart fields whose value in ``new`` differs from the running one, as ``{field: {"running": ...,
    "configured": ...}}``. Fields set on the command line (``overrides``) win over the file and are skipped."""
    out = {}
    for name in RESTART_FIELDS:
        if name in overrides:
            continue
        old, value = effective(running, name), effective(new, name)
        if old != value:
            out[name] = {"running": old, "configured": value}
    return out


class ConfigWatcher:
    """Notices that a config file changed: by polling its stat (mtime, size, inode) and, when that moved, the sha256
    of its bytes, so touching or rewriting it unchanged is not a change. A file modified in the last two seconds is
    hashed at every poll, so two writes within one mtime tick are not missed."""

    RECENT = 2.0

    def __init__(self, path: str) -> None:
        self.path = path
        self.stat_key: tuple | None = None
        self.digest: str | None = None
        self.missing = False
        self.sync()

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except OSError:
            return None

    def _digest(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None

    def sync(self) -> None:
        """Take the file as it is now as the baseline (called before each load, whatever triggered it)."""
        st = self._stat()
        self.stat_key = None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        self.digest = self._digest()

    def poll(self) -> str | None:
        """``"changed"`` when the content differs from the baseline (which then moves), ``"missing"`` the first
        time the file cannot be read, else None."""
        st = self._stat()
        if st is None:
            if self.missing:
                return None
            self.missing = True
            return "missing"
        self.missing = False
        key = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        if key == self.stat_key and time.time() - st.st_mtime > self.RECENT:
            return None
        self.stat_key = key
        digest = self._digest()
        if digest is None or digest == self.digest:
            return None
        self.digest = digest
        return "changed"

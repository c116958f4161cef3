"""Shared fixtures: real upstreams (httpbin under gunicorn, a scripted raw server) and the gateway process.

Fixtures
- ``httpbin`` (session): ``HttpbinServer`` with ``.url``, ``.host``, ``.port``, ``.hostport``.
- ``scripted`` (session): ``ScriptedUpstream`` with ``.url``, ``.port``, ``.requests``, ``.wait_request(token)``,
  ``.request_for(token)``, ``.open_gate(name)``; actions are listed in ``tests/fixtures/upstreams.py``.
- ``pki`` (session): test CAs and certificates (``tests/fixtures/certs.py``); ``scripted_tls``, ``scripted_tls_chain``
  and ``scripted_mtls`` (session): the scripted upstream over TLS (requests record ``.sni`` and ``.client_cn``).
- ``gateway`` (function): factory ``gateway(config: dict, name: str | None = None, workers=1, args=()) -> Gateway``;
  each gateway is stopped (SIGTERM, then SIGKILL) at teardown. ``Gateway`` has ``.url``, ``.host``, ``.port``,
  ``.pid`` (the supervisor), ``.worker_pids()``, ``.worker_pid`` (the only worker), ``.access_log_lines()``,
  ``.log_for(request_id)``, ``.wait_log(pred)``, ``.stderr_events(name)``, ``.wait_event(name, after=mark())``,
  ``.write_config(cfg)``, ``.reload(cfg)`` (SIGHUP; returns the outcome event), ``.rss_kb()``, ``.hwm_kb()``,
  ``.raw()`` (a ``RawConnection``), ``.request(method, path, body, headers)``, ``.stop()``.
- ``shared_gateway`` (session): the same factory, but one process per distinct config for the whole session. Use it
  when a test only looks at its own requests (tagged with ``token``), never at process-wide state.
- ``token`` (function): a fresh hex id to tag requests (``?t=<token>``) so the scripted upstream can find them.
- ``refusing_port`` (function): ``RefusingPort`` with ``.url``/``.port`` that refuses connections.
- ``raw`` (function): factory ``raw(host, port, timeout=10) -> RawConnection``, closed at teardown.
"""

from __future__ import annotations

import json
import uuid
import warnings

import pytest

from tests.fixtures.gateway import Gateway
from tests.fixtures.rawhttp import RawConnection
from tests.fixtures.upstreams import HttpbinServer, RefusingPort, ScriptedUpstream


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 30 s; deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def httpbin(tmp_path_factory):
    server = HttpbinServer(threads=16, log_dir=tmp_path_factory.mktemp("httpbin")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def scripted():
    server = ScriptedUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pki():
    """Test CAs and certificates (``tests/fixtures/certs.py`` ``PKI``), generated once per session."""
    from tests.fixtures.certs import PKI

    return PKI()


@pytest.fixture(scope="session")
def scripted_tls(pki):
    """``ScriptedUpstream`` over TLS, presenting ``pki.upstream`` (upstream.test, alias.test, localhost, 127.0.0.1)."""
    server = ScriptedUpstream(ssl=pki.root.server_context(pki.upstream)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def scripted_tls_chain(pki):
    """``ScriptedUpstream`` over TLS, presenting ``pki.upstream_chain`` (chain.test) with its intermediate CA."""
    server = ScriptedUpstream(ssl=pki.intermediate.server_context(pki.upstream_chain)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def scripted_mtls(pki):
    """``ScriptedUpstream`` over TLS that requires a client certificate signed by ``pki.clients``."""
    server = ScriptedUpstream(ssl=pki.root.server_context(pki.upstream, client_ca=pki.clients)).start()
    yield server
    server.stop()


_stale_warned: set[str] = set()


def _check_stale(gw: Gateway) -> None:
    """Compiled modules older than their source mean these tests run old code: say so, once per session."""
    new = [m for m in gw.stale_modules if m not in _stale_warned]
    if new:
        _stale_warned.update(new)
        warnings.warn(f"the gateway runs compiled modules older than their source: {new}; results reflect the old "
                      "code (rebuild: pip install -e .)", stacklevel=2)


def _stop_and_check(gw: Gateway, where: str) -> None:
    gw.stop()
    if gw.killed:
        warnings.warn(f"{where}: gateway pid {gw.pid} had not exited 5 s after SIGTERM and was killed (the gateway "
                      "waits for in-flight requests: was one stuck?); stderr tail:\n"
                      + "\n".join(gw.stderr_text().splitlines()[-10:]), stacklevel=1)


@pytest.fixture
def gateway(tmp_path, request):
    started: list[Gateway] = []

    def make(config: dict, name: str | None = None, **kw) -> Gateway:
        gw = Gateway(config, tmp_path, name=name or f"gw{len(started)}", **kw)
        started.append(gw)
        gw.start()
        _check_stale(gw)
        return gw

    yield make
    for gw in started:
        _stop_and_check(gw, request.node.nodeid)


@pytest.fixture(scope="session")
def shared_gateway(tmp_path_factory):
    cache: dict[str, Gateway] = {}
    base = tmp_path_factory.mktemp("shared-gw")

    def make(config: dict) -> Gateway:
        key = json.dumps(config, sort_keys=True)
        gw = cache.get(key)
        if gw is None or not gw.alive():
            gw = Gateway(config, base, name=f"gw{len(cache)}")
            cache[key] = gw
            gw.start()
            _check_stale(gw)
        return gw

    yield make
    for gw in cache.values():
        _stop_and_check(gw, "shared gateway")


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def refusing_port():
    p = RefusingPort()
    yield p
    p.close()


@pytest.fixture
def raw():
    conns: list[RawConnection] = []

    def make(host: str, port: int, timeout: float = 10.0) -> RawConnection:
        c = RawConnection(host, port, timeout)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()

"""Hot reload: SIGHUP, `gwanmun reload`, a changed config file; bad and identical configs; settings that need a
restart; requests in flight keep their config; and reloads under load lose nothing."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time

from tests.fixtures.certs import common_name, handshake, tls_raw
from tests.fixtures.gateway import REPO_ROOT, route, service, single_service
from tests.fixtures.rawhttp import RawConnection

NO_WATCH = {"config_watch_interval": 0}  # only SIGHUP reloads: a test knows what triggered each reload


def _routes(url: str, *paths: str, gateway: dict | None = None, **service_kw) -> dict:
    cfg = {"services": [service("svc", url, [route(f"r{i}", [p], strip_path=False) for i, p in enumerate(paths)],
                                **service_kw)]}
    cfg["gateway"] = dict(NO_WATCH, **(gateway or {}))
    return cfg


def _status(gw, path: str) -> int:
    return gw.request("GET", path).status


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "gwanmun", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=30)


def test_sighup_reloads_in_place(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one"))
    worker = gw.worker_pid
    assert _status(gw, "/one/echo") == 200 and _status(gw, "/two/echo") == 404
    ev = gw.reload(_routes(scripted.url, "/two"))
    assert ev["event"] == "config_reloaded" and ev["trigger"] == "SIGHUP"
    assert ev["workers"] == 1 and ev["failed"] == 0
    assert _status(gw, "/two/echo") == 200 and _status(gw, "/one/echo") == 404
    assert gw.worker_pids() == [worker], "a reload must not restart the worker"


def test_gwanmun_reload_command(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one"))
    gw.write_config(_routes(scripted.url, "/two"))
    mark = gw.mark()
    p = _cli("reload", "--pid-file", str(gw.pid_file))
    assert p.returncode == 0, p.stderr
    assert f"pid {gw.pid}" in p.stdout
    assert gw.wait_event("config_reloaded", after=mark)["trigger"] == "SIGHUP"
    assert _status(gw, "/two/echo") == 200

    # --config: validated first, then its gateway.pid_file is used
    gw.write_config(_routes(scripted.url, "/three"))
    mark = gw.mark()
    p = _cli("reload", "--config", str(gw.config_path))
    assert p.returncode == 0, p.stderr
    gw.wait_event("config_reloaded", after=mark)
    assert _status(gw, "/three/echo") == 200


def test_gwanmun_reload_errors(gateway, scripted, tmp_path):
    p = _cli("reload", "--pid-file", str(tmp_path / "none.pid"))
    assert p.returncode == 1 and "no pid file" in p.stderr
    (tmp_path / "stale.pid").write_text("999999999\n")
    p = _cli("reload", "--pid-file", str(tmp_path / "stale.pid"))
    assert p.returncode == 1 and "not running" in p.stderr

    gw = gateway(_routes(scripted.url, "/one"))
    gw.write_config('_format_version: "3.0"\nservices: [{name: s, url: "nope"}]\n' +
                    f'gateway: {{pid_file: "{gw.pid_file}", config_watch_interval: 0}}\n')
    mark = gw.mark()
    p = _cli("reload", "--config", str(gw.config_path))
    assert p.returncode == 1
    assert "services[0].url" in p.stderr and "not reloading" in p.stderr
    time.sleep(0.3)
    assert not gw.stderr_events(after=mark), "an invalid config must not be sent to the gateway"


def test_config_file_change_reloads(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one", gateway={"config_watch_interval": 0.2}))
    mark = gw.mark()
    gw.write_config(_routes(scripted.url, "/two", gateway={"config_watch_interval": 0.2}))
    ev = gw.wait_event(("config_reloaded", "config_rejected"), after=mark, timeout=5)
    assert ev["event"] == "config_reloaded" and ev["trigger"] == "file changed"
    assert _status(gw, "/two/echo") == 200
    # rewriting the same bytes, or touching the file, is not a change
    mark = gw.mark()
    gw.write_config(_routes(scripted.url, "/two", gateway={"config_watch_interval": 0.2}))
    os.utime(gw.config_path)
    time.sleep(1.0)
    assert not [e for e in gw.stderr_events(after=mark) if e.get("event", "").startswith("config_")]


def test_invalid_config_is_rejected_and_the_old_one_keeps_serving(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one"))
    worker = gw.worker_pid
    bad = _routes(scripted.url, "/one")
    bad["services"][0]["routes"][0]["paths"] = ["~/items/(\\d+"]
    ev = gw.reload(bad)
    assert ev["event"] == "config_rejected" and ev["level"] == "error" and ev["trigger"] == "SIGHUP"
    assert ev["file"] == str(gw.config_path)
    (err,) = ev["errors"]
    line = next(i for i, text in enumerate(gw.config_path.read_text().splitlines(), 1) if "items" in text)
    assert err.startswith(f"{gw.config_path}:{line}: services[0].routes[0].paths[0]: invalid regex")
    assert _status(gw, "/one/echo") == 200

    ev = gw.reload("_format_version: '3.0'\nservices: [\n")  # YAML syntax error
    assert ev["event"] == "config_rejected" and "YAML syntax error" in ev["errors"][0]
    assert _status(gw, "/one/echo") == 200

    assert gw.alive() and gw.worker_pids() == [worker]
    assert gw.reload(_routes(scripted.url, "/two"))["event"] == "config_reloaded"  # and it recovers
    assert _status(gw, "/two/echo") == 200


def test_identical_config_is_a_no_op(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one"))
    started_hash = gw.stderr_events("started")[0]["config_hash"]
    mark = gw.mark()
    # the same config written differently: keys reordered, a comment, a default spelled out
    text = gw.config_path.read_text()
    same = "# rewritten by hand\n" + json.dumps(dict(reversed(list(gw.config.items())))) + "\n"
    assert same != text
    gw.config_path.write_text(same)
    ev = gw.reload()
    assert ev["event"] == "config_unchanged" and ev["config_hash"] == started_hash
    assert not gw.stderr_events("config_reloaded", after=mark)


def test_restart_only_settings_are_reported_and_the_rest_applies(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one", gateway={"workers": 1}), workers=None)
    old_port = gw.port
    new = _routes(scripted.url, "/two", gateway={"workers": 2, "listen": ["127.0.0.1:0", "127.0.0.1:0"]})
    mark = gw.mark()
    ev = gw.reload(new)
    assert ev["event"] == "config_reloaded"
    warn = gw.stderr_events("config_needs_restart", after=mark)[0]
    assert warn["level"] == "warning"
    assert warn["fields"] == ["gateway.listen", "gateway.workers"]
    assert warn["changes"]["gateway.workers"] == {"running": 1, "configured": 2}
    assert len(gw.worker_pids()) == 1 and gw.port == old_port
    assert _status(gw, "/two/echo") == 200  # the routes changed anyway, on the listener that never closed


def test_live_gateway_settings_apply(gateway, scripted, token, tmp_path):
    gw = gateway(_routes(scripted.url, "/"))
    r = gw.request("GET", f"/echo?t={token}")
    assert r.header("via") == "1.1 gwanmun" and r.header("x-request-id")
    new_log = tmp_path / "after-reload.log"
    gw.reload(_routes(scripted.url, "/", gateway={"via_header": False, "request_id_header": "X-Trace-Id",
                                                  "access_log": str(new_log)}))
    r = gw.request("GET", f"/echo?t={token}&after=1")
    assert r.header("via") is None and r.header("x-request-id") is None
    rid = r.header("x-trace-id")
    assert rid

    def logged():
        lines = [json.loads(x) for x in new_log.read_text().splitlines()] if new_log.exists() else []
        return [e for e in lines if e["request_id"] == rid]

    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged(), "the access log did not move to the new file"


def test_request_in_flight_finishes_on_the_config_it_started_with(gateway, scripted, token):
    """A slow request started before a reload ends on the old runtime: old route, old service, old response
    settings; a request after the reload gets the new ones."""
    old = {"services": [service("old", scripted.url + "/a", [route("slow-old", ["/slow"])], read_timeout=60000)],
           "gateway": dict(NO_WATCH)}
    new = {"services": [service("new", scripted.url + "/b", [route("slow-new", ["/slow"])], read_timeout=60000)],
           "gateway": dict(NO_WATCH, via_header=False, request_id_header="X-Trace-Id")}
    gw = gateway(old)
    gate = f"g-{token}"
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.send(f"POST /slow/sink?gate={gate}&t={token} HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
               .encode())
        assert scripted.wait_request(token)[0].path == "/a/sink"
        assert gw.reload(new)["event"] == "config_reloaded"

        after = gw.request("POST", f"/slow/sink?t={token}-after", body=b"hi")  # no gate: answered at once
        assert after.status == 200 and after.header("via") is None and after.header("x-trace-id")
        assert scripted.request_for(f"{token}-after").path == "/b/sink"

        scripted.open_gate(gate)
        r = c.read_response()
    assert r.status == 200 and r.json()["bytes"] == 5
    assert r.header("via") == "1.1 gwanmun", "the response was built with the new config"
    assert r.header("x-trace-id") is None
    rid = r.header("x-request-id")
    assert rid
    entry = gw.log_for(rid)
    assert entry["route"] == "slow-old" and entry["service"] == "old" and entry["status"] == 200
    assert gw.log_for(after.header("x-trace-id"))["route"] == "slow-new"


def test_reload_reaches_every_worker(gateway, scripted):
    gw = gateway(_routes(scripted.url, "/one"), workers=2)
    pids = sorted(gw.worker_pids())
    ev = gw.reload(_routes(scripted.url, "/two"))
    assert ev["workers"] == 2 and ev["failed"] == 0
    seen = set()
    for i in range(40):  # new connections: both workers answer some of them
        r = gw.request("GET", f"/two/echo?i={i}")
        assert r.status == 200
        seen.add(r.header("x-request-id").rsplit("-", 1)[0])
    assert len(seen) == 2
    assert sorted(gw.worker_pids()) == pids


def test_reload_changes_certificates_for_new_handshakes(gateway, scripted, pki):
    """Certificates travel to the workers with the config; a TLS connection open across the reload keeps working."""
    before = pki.root.issue("cert.test", cn="before reload")
    after = pki.root.issue("cert.test", cn="after reload")

    def config(issued) -> dict:
        return {"services": [service("s", scripted.url, [route("r", ["/"], strip_path=False)])],
                "certificates": [{"cert": issued.cert_pem, "key": issued.key_pem, "snis": ["cert.test"]}],
                "gateway": dict(NO_WATCH, listen=["127.0.0.1:0 ssl"])}

    gw = gateway(config(before), workers=2)
    assert common_name(handshake(gw.host, gw.port, "cert.test")) == "before reload"
    with tls_raw(gw.host, gw.port, "cert.test") as c:
        c.request("GET", "/echo")
        assert c.read_response().status == 200
        assert gw.reload(config(after))["workers"] == 2
        c.request("GET", "/echo?again=1")
        assert c.read_response().status == 200
    for _ in range(10):  # new connections, on either worker
        assert common_name(handshake(gw.host, gw.port, "cert.test")) == "after reload"


# -- reloads under load --------------------------------------------------------------------------------------------


class _Load:
    """Client threads sending requests until stopped: ``keepalive`` on one connection each, the others on a new
    connection per request. Counts answers by the config that served them, failures and refused connections."""

    def __init__(self, gw, keepalive: int = 2, fresh: int = 2):
        self.gw = gw
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = {"a": 0, "b": 0}
        self.failed: list[str] = []
        self.refused = 0
        self.threads = [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]

    def _run(self, keepalive: bool) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.gw.host, self.gw.port, timeout=10)
                conn.request("GET", "/load/echo", headers={} if keepalive else {"Connection": "close"})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise AssertionError(f"status {r.status}: {body[:200]!r}")
                which = json.loads(body)["path"].split("/")[1]
                with self.lock:
                    self.ok[which] += 1
            except ConnectionRefusedError:
                with self.lock:
                    self.refused += 1
            except Exception as exc:
                with self.lock:
                    self.failed.append(f"{'keep-alive' if keepalive else 'new'} connection: {exc!r}")
            if not keepalive and conn is not None:
                conn.close()
                conn = None

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_twenty_reloads_under_load_lose_no_request(gateway, scripted):
    """The bar for reloads: 20 reloads (alternating two valid configs) while clients on keep-alive and on new
    connections keep sending requests: every request answered 200, no connection refused."""
    def config(which: str) -> dict:
        extra = [route(f"x{i}", [f"/x{i}"]) for i in range(30 if which == "b" else 5)]
        return {"services": [service(f"svc-{which}", f"{scripted.url}/{which}", [route("load", ["/load"])] + extra)],
                "gateway": dict(NO_WATCH)}

    gw = gateway(config("a"), workers=2)
    mark = gw.mark()
    with _Load(gw) as load:
        time.sleep(0.3)
        for i in range(20):
            ev = gw.reload(config("b" if i % 2 == 0 else "a"))
            assert ev["event"] == "config_reloaded" and ev["workers"] == 2, ev
            time.sleep(0.15)
        time.sleep(0.3)
    served = load.ok["a"] + load.ok["b"]
    print(f"20 reloads: {served} requests ({load.ok}), {len(load.failed)} failed, {load.refused} refused")
    assert load.failed == [] and load.refused == 0
    assert len(gw.stderr_events("config_reloaded", after=mark)) == 20
    assert load.ok["a"] > 50 and load.ok["b"] > 50, f"both configs served: {load.ok}"
    assert not gw.stderr_events("worker_exited"), "a reload restarted a worker"

"""The Admin API on real gateway processes (SQLite in tmp_path, and DB-less): Kong's paths and shapes, changes
applied to traffic, validation with field paths and nothing stored, history/diff/rollback (API and CLI), tokens and
roles, restarts and the last known good copy, and schemathesis against the served OpenAPI document."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from gwanmun.auth.secrets import hash_key
from tests.fixtures.admin import AdminClient, AdminNode, admin_config
from tests.fixtures.gateway import REPO_ROOT
from tests.fixtures.rawhttp import wait_for


def start(gateway, admin: dict | None = None, config: dict | None = None, name: str | None = None,
          token: str | None = None, **kw) -> AdminNode:
    cfg = admin_config(config or {"_format_version": "3.0"}, **(admin or {}))
    return AdminNode(gateway(cfg, name=name, **kw), token)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "gwanmun", *args], cwd=str(REPO_ROOT), env=env, capture_output=True,
                          text=True, timeout=timeout)


def applied(node: AdminNode, mark: int) -> dict:
    """Wait until the node's newest version is served by every worker."""
    return node.wait_version(node.version(), after=mark)


def proxied(node: AdminNode, path: str, status: int = 200, timeout: float = 5.0, headers: dict | None = None):
    def check():
        r = node.gw.request("GET", path, headers=headers)
        return r if r.status == status else None

    return wait_for(check, timeout, 0.02, f"{path} answering {status}")


def is_uuid(v) -> bool:
    try:
        return str(uuid.UUID(v)) == v
    except (TypeError, ValueError):
        return False


def test_services_and_routes_crud_in_kong_shapes_applied_to_traffic(gateway, scripted):
    node = start(gateway)
    api = node.api
    assert api.get("/").json["tagline"] == "Welcome to gwanmun"
    mark = node.gw.mark()
    r = api.post("/services", {"name": "svc", "url": scripted.url, "tags": ["t1"]})
    assert r.status == 201, r.json
    svc = r.json
    assert is_uuid(svc["id"]) and isinstance(svc["created_at"], int) and svc["host"] == "127.0.0.1"
    assert svc["port"] == scripted.port and svc["protocol"] == "http" and svc["retries"] == 5
    r = api.post("/services/svc/routes", {"name": "r1", "paths": ["/r1"]})
    assert r.status == 201 and r.json["service"] == {"id": svc["id"]} and r.json["strip_path"] is True
    applied(node, mark)
    assert proxied(node, "/r1/echo").json()["target"] == "/echo"
    # reads: by name and by id, nested, the route's service, lists
    assert api.get(f"/services/{svc['id']}").json == api.get("/services/svc").json
    assert api.get("/services/svc/routes/r1").json["name"] == "r1"
    assert api.get("/routes/r1/service").json["id"] == svc["id"]
    assert [x["name"] for x in api.get("/services/svc/routes").json["data"]] == ["r1"]
    assert api.get("/services/nope/routes").status == 404
    # PATCH moves traffic
    mark = node.gw.mark()
    created_at = api.get("/routes/r1").json["created_at"]
    r = api.patch("/routes/r1", {"paths": ["/r2"]})
    assert r.status == 200 and r.json["paths"] == ["/r2"] and r.json["created_at"] == created_at
    applied(node, mark)
    proxied(node, "/r2/echo")
    assert node.gw.request("GET", "/r1/echo").status == 404
    # PUT upserts by name: creates, then replaces (fields left out go back to their defaults)
    r = api.put("/services/svc2", {"url": scripted.url, "retries": 1})
    assert r.status == 200 and r.json["name"] == "svc2" and r.json["retries"] == 1
    sid2 = r.json["id"]
    r = api.put("/services/svc2", {"url": scripted.url})
    assert r.status == 200 and r.json["id"] == sid2 and r.json["retries"] == 5
    # 409, 400 with the field path (and nothing stored), foreign keys
    versions = len(api.get("/config/versions").json["data"])
    r = api.post("/services", {"name": "svc", "url": scripted.url})
    assert r.status == 409 and r.json["name"] == "unique constraint violation"
    r = api.post("/services/svc/routes", {"name": "bad", "paths": ["no-slash"]})
    assert r.status == 400 and r.json["name"] == "schema violation" and "paths[0]" in r.json["fields"]
    r = api.post("/routes", {"name": "r3", "paths": ["/r3"], "service": {"id": str(uuid.uuid4())}})
    assert r.status == 400 and r.json["name"] == "foreign key violation"
    r = api.patch("/services/svc2", {"fallback": {"service": "missing"}})
    assert r.status == 400 and "fallback.service" in r.json["fields"]
    assert api.post("/services", raw=b"{not json", headers={"Content-Type": "application/json"}).status == 400
    assert len(api.get("/config/versions").json["data"]) == versions
    # DELETE: refused while routes use the service, 204 otherwise (also for something absent)
    r = api.delete("/services/svc")
    assert r.status == 400 and r.json["message"] == "an existing 'routes' entity references this 'services' entity"
    assert api.delete("/services/svc/routes/r1").status == 204
    assert api.delete("/services/svc").status == 204
    assert api.delete("/services/svc").status == 204
    r = api.get("/services/svc")
    assert r.status == 404 and r.json == {"message": "Not found"}
    assert api.get("/no/such/path").json == {"message": "Not found"}


def test_pagination_and_tags(gateway):
    node = start(gateway)
    api = node.api
    for i in range(5):
        assert api.put(f"/services/s{i}", {"host": "a.test", "tags": ["odd" if i % 2 else "even"]}).status == 200
    page = api.get("/services?size=2").json
    names = [s["name"] for s in page["data"]]
    while page["next"]:
        page = api.get(page["next"]).json
        names += [s["name"] for s in page["data"]]
    assert names == ["s0", "s1", "s2", "s3", "s4"] and "offset" not in page
    assert [s["name"] for s in api.get("/services?tags=odd").json["data"]] == ["s1", "s3"]
    r = api.get("/services?size=0")
    assert r.status == 400 and r.json["name"] == "invalid size"
    assert api.get("/services?offset=%21").status == 400


def test_consumers_credentials_and_plugins(gateway, scripted):
    node = start(gateway)
    api = node.api
    api.put("/services/svc", {"url": scripted.url})
    api.put("/services/svc/routes/keyed", {"paths": ["/keyed"]})
    api.put("/services/svc/routes/basic", {"paths": ["/basic"]})
    r = api.post("/routes/keyed/plugins", {"name": "key-auth"})
    assert r.status == 201 and r.json["route"] == {"id": api.get("/routes/keyed").json["id"]}
    assert api.post("/routes/basic/plugins", {"name": "basic-auth"}).status == 201
    assert api.post("/routes/basic/plugins", {"name": "basic-auth"}).status == 409  # one per scope
    assert api.post("/consumers", {"username": "alice"}).status == 201
    mark = node.gw.mark()
    key = api.post("/consumers/alice/key-auth", {})
    assert key.status == 201 and len(key.json["key"]) == 32 and key.json["consumer"]["id"]
    basic = api.post("/consumers/alice/basic-auth", {"username": "alice", "password": "s3cret"})
    assert basic.status == 201 and basic.json["password"].startswith(("$argon2", "$2b$"))  # stored hashed
    assert api.post("/consumers/alice/acls", {"group": "admins"}).status == 201
    jwt = api.post("/consumers/alice/jwt", {})
    assert jwt.status == 201 and jwt.json["algorithm"] == "HS256" and jwt.json["secret"]
    applied(node, mark)
    proxied(node, "/keyed/echo", 401)
    proxied(node, "/keyed/echo", headers={"apikey": key.json["key"]})
    basic_auth = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    proxied(node, "/basic/echo", headers={"Authorization": basic_auth})
    # Kong's other paths to the same entities
    assert api.get(f"/consumers/alice/key-auth/{key.json['key']}").json["id"] == key.json["id"]
    assert [k["id"] for k in api.get("/key-auths").json["data"]] == [key.json["id"]]
    assert api.get(f"/basic-auths/{basic.json['id']}").json["username"] == "alice"
    assert [a["group"] for a in api.get("/consumers/alice/acls").json["data"]] == ["admins"]
    assert len(api.get("/plugins").json["data"]) == 2
    assert "key-auth" in api.get("/plugins/enabled").json["enabled_plugins"]
    assert "properties" in api.get("/schemas/plugins/key-auth").json
    # deleting the consumer takes its credentials along
    mark = node.gw.mark()
    assert api.delete("/consumers/alice").status == 204
    assert api.get("/key-auths").json["data"] == [] and api.get("/basic-auths").json["data"] == []
    applied(node, mark)
    proxied(node, "/keyed/echo", 401, headers={"apikey": key.json["key"]})


def test_upstreams_targets_certificates_and_snis(gateway, scripted, pki):
    node = start(gateway)
    api = node.api
    assert api.post("/upstreams", {"name": "pool.internal"}).status == 201
    t = api.post("/upstreams/pool.internal/targets", {"target": f"127.0.0.1:{scripted.port}"})
    assert t.status == 201 and t.json["weight"] == 100 and t.json["upstream"]["id"]
    assert api.get(f"/upstreams/pool.internal/targets/127.0.0.1:{scripted.port}").json["id"] == t.json["id"]
    mark = node.gw.mark()
    api.put("/services/pooled", {"host": "pool.internal", "port": 80})
    api.post("/services/pooled/routes", {"name": "pooled", "paths": ["/pooled"]})
    applied(node, mark)
    proxied(node, "/pooled/echo")
    cert = pki.root.issue("site.test", "www.site.test")
    r = api.post("/certificates", {"cert": cert.cert_pem, "key": cert.key_pem, "snis": ["site.test"]})
    assert r.status == 201 and r.json["snis"] == ["site.test"]
    cid = r.json["id"]
    assert api.post(f"/certificates/{cid}/snis", {"name": "www.site.test"}).status == 201
    assert sorted(s["name"] for s in api.get("/snis").json["data"]) == ["site.test", "www.site.test"]
    assert api.get("/snis/www.site.test").json["certificate"] == {"id": cid}
    assert api.post("/snis", {"name": "site.test", "certificate": {"id": cid}}).status == 409
    r = api.post("/certificates", {"cert": cert.cert_pem, "key": pki.upstream.key_pem})
    assert r.status == 400 and "key" in r.json["fields"]
    assert api.delete(f"/certificates/{cid}").status == 204
    assert api.get("/snis").json["data"] == []


def test_post_config_history_diff_and_rollback(gateway, scripted):
    node = start(gateway)
    api = node.api
    first = {"_format_version": "3.0", "services": [
        {"name": "svc", "url": scripted.url, "routes": [{"name": "one", "paths": ["/one"]}]}]}
    mark = node.gw.mark()
    r = api.post("/config", first)
    assert r.status == 201 and [x["name"] for x in r.json["routes"]] == ["one"] and r.json["version"] == 1
    applied(node, mark)
    proxied(node, "/one/echo")
    # Kong's {"config": "<yaml>"} form, and YAML bodies
    second = yaml.safe_dump({"_format_version": "3.0", "services": [
        {"name": "svc", "url": scripted.url, "routes": [{"name": "two", "paths": ["/two"]}]}]})
    mark = node.gw.mark()
    r = api.post("/config", {"config": second})
    assert r.status == 201 and r.json["version"] == 2
    assert r.json["services"][0]["id"] == api.get("/config/versions/1").json["config"]["services"][0]["id"]
    applied(node, mark)
    proxied(node, "/two/echo")
    assert api.post("/config?check_hash=1", raw=second.encode(), headers={"Content-Type": "application/yaml"}) \
        .status == 304
    # invalid: 400 with the path in the posted document, nothing stored
    bad = {"_format_version": "3.0", "services": [{"name": "svc", "url": scripted.url,
                                                   "routes": [{"name": "x", "paths": ["nope"]}]}]}
    r = api.post("/config", bad)
    assert r.status == 400 and r.json["name"] == "invalid declarative configuration"
    assert "services[0].routes[0].paths[0]" in r.json["fields"]
    assert api.post("/config", {"_format_version": "3.0", "gateway": {"workers": 2}}).status == 400
    versions = api.get("/config/versions").json["data"]
    assert [v["version"] for v in versions] == [2, 1] and versions[0]["author"].startswith("admin (127.0.0.1)")
    diff = api.get("/config/versions/2/diff").json
    assert {(c["op"], c["name"]) for c in diff["changes"]} == {("create", "two"), ("delete", "one")}
    assert "-      - /one" in diff["diff"] or "- /one" in diff["diff"]
    assert "/two" in api.get("/config").json["config"]
    mark = node.gw.mark()
    r = api.post("/config/rollback", {"version": 1})
    assert r.status == 201 and r.json["version"] == 3 and r.json["message"] == "rollback to version 1"
    applied(node, mark)
    proxied(node, "/one/echo")
    assert api.post("/config/rollback", {"version": 99}).status == 404
    assert api.post("/config/rollback", {"version": "x"}).status == 400


def test_cli_history_dump_sync_rollback_against_a_running_node(gateway, scripted, tmp_path):
    node = start(gateway, admin={"poll_interval": 0.2}, name="node")
    config = str(node.gw.config_path)
    api = node.api
    api.put("/services/svc", {"url": scripted.url})
    api.put("/services/svc/routes/a", {"paths": ["/a"]})
    assert cli("migrations", "status", "--config", config).returncode == 0
    out = cli("config", "history", "--config", config)
    assert out.returncode == 0 and "PUT /services/svc/routes/a" in out.stdout
    dump_path = tmp_path / "dump.yaml"
    assert cli("config", "dump", "--config", config, "-o", str(dump_path)).returncode == 0
    dumped = yaml.safe_load(dump_path.read_text())
    assert dumped["services"][0]["routes"][0]["paths"] == ["/a"] and "id" in dumped["services"][0]
    # edit the dump and sync it: the running node picks the new version up (it polls its SQLite file)
    dumped["services"][0]["routes"][0]["paths"] = ["/b"]
    dump_path.write_text(yaml.safe_dump(dumped))
    dry = cli("config", "sync", "--config", config, str(dump_path), "--dry-run")
    assert dry.returncode == 0 and "update route a" in dry.stdout and "nothing applied" in dry.stdout
    mark = node.gw.mark()
    out = cli("config", "sync", "--config", config, str(dump_path))
    assert out.returncode == 0 and "version 3" in out.stdout, out.stdout + out.stderr
    node.wait_version(3, after=mark)
    proxied(node, "/b/echo")
    assert cli("config", "sync", "--config", config, str(dump_path)).stdout.strip() == "in sync: nothing to do"
    # an invalid file: every error, nothing applied
    dumped["services"][0]["routes"][0]["paths"] = ["b"]
    dump_path.write_text(yaml.safe_dump(dumped))
    out = cli("config", "sync", "--config", config, str(dump_path))
    assert out.returncode == 1 and "services[0].routes[0].paths[0]" in out.stderr
    out = cli("config", "diff", "--config", config, "3")
    assert out.returncode == 0 and "update route a (paths" in out.stdout
    mark = node.gw.mark()
    out = cli("config", "rollback", "--config", config, "2", "--author", "ops")
    assert out.returncode == 0 and "version 4: rollback to version 2" in out.stdout
    node.wait_version(4, after=mark)
    proxied(node, "/a/echo")
    assert api.get("/config/versions?size=1").json["data"][0]["author"] == "ops"


def test_admin_tokens_and_roles(gateway):
    tokens = [{"name": "ops", "token_hash": hash_key("admin-secret-token"), "role": "admin"},
              {"name": "viewer", "token_hash": hash_key("viewer-secret-token"), "role": "read-only"}]
    node = start(gateway, admin={"tokens": tokens}, token="admin-secret-token")
    anon = AdminClient(node.address)
    viewer = AdminClient(node.address, "viewer-secret-token")
    r = anon.get("/services")
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert AdminClient(node.address, "wrong").get("/services").status == 401
    assert anon.get("/openapi.json").status == 200  # the spec is public
    assert node.api.post("/services", {"name": "s", "host": "a.test"}).status == 201
    assert anon.get("/services", headers={"Kong-Admin-Token": "admin-secret-token"}).status == 200
    assert viewer.get("/services/s").status == 200 and viewer.get("/status").status == 200
    r = viewer.patch("/services/s", {"retries": 1})
    assert r.status == 403 and "read-only" in r.json["message"]
    assert viewer.delete("/services/s").status == 403
    assert node.api.get("/config/versions").json["data"][0]["author"] == "ops (127.0.0.1)"


def test_non_loopback_admin_listener_needs_tokens(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text("_format_version: '3.0'\ngateway:\n  admin:\n    listen: ['0.0.0.0:8001']\n")
    out = cli("validate", str(path))
    assert out.returncode == 1 and "not a loopback address" in out.stderr


def test_dbless_mode_reads_the_file_and_takes_post_config(gateway, scripted):
    cfg = {"_format_version": "3.0", "services": [{"name": "svc", "url": scripted.url,
                                                   "routes": [{"name": "file", "paths": ["/file"]}]}]}
    node = start(gateway, admin={"database": "off"}, config=cfg)
    api = node.api
    assert [r["name"] for r in api.get("/routes").json["data"]] == ["file"]
    r = api.post("/services", {"name": "x", "host": "a.test"})
    assert r.status == 405 and r.json["name"] == "operation unsupported"
    assert api.delete("/routes/file").status == 405
    mark = node.gw.mark()
    r = api.post("/config", {"_format_version": "3.0", "services": [
        {"name": "svc", "url": scripted.url, "routes": [{"name": "posted", "paths": ["/posted"]}]}]})
    assert r.status == 201
    applied(node, mark)
    proxied(node, "/posted/echo")
    assert node.gw.request("GET", "/file/echo").status == 404
    # the file changes afterwards: the file wins again
    cfg["services"][0]["routes"][0]["paths"] = ["/file2"]
    outcome = node.gw.reload(admin_config(cfg, database="off"))
    assert outcome["event"] == "config_reloaded"
    proxied(node, "/file2/echo")
    assert [r["paths"] for r in api.get("/routes").json["data"]] == [["/file2"]]


def test_restart_keeps_the_config_and_an_unusable_store_falls_back_to_the_last_known_good(gateway, scripted):
    node = start(gateway, name="keep")
    node.api.put("/services/svc", {"url": scripted.url})
    node.api.put("/services/svc/routes/kept", {"paths": ["/kept"]})
    version = node.version()
    workdir = node.gw.workdir
    lkg = workdir / "keep.lkg.json"
    wait_for(lambda: lkg.exists() and f'"version":{version}' in lkg.read_text(), 5, 0.02, "the last known good copy")
    node.gw.stop()
    # restarted: the store has it
    again = start(gateway, name="keep")
    proxied(again, "/kept/echo")
    assert again.api.get("/status").json["config"]["source"] == "database"
    again.gw.stop()
    # the store cannot be opened (its file replaced by a directory): the last known good copy serves
    db = workdir / "keep.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.mkdir()
    try:
        third = start(gateway, name="keep")
        third.gw.wait_event("config_from_cache")
        proxied(third, "/kept/echo")
        status = third.api.get("/status").json
        assert status["config"]["source"] == "cache" and status["database"]["reachable"] is False
        r = third.api.post("/services", {"name": "new", "host": "a.test"})
        assert r.status == 503 and "unavailable" in r.json["message"]
        assert third.api.get("/routes/kept").status == 200  # reads still work
    finally:
        shutil.rmtree(db, ignore_errors=True)


def test_schemathesis_against_the_openapi_document(gateway, tmp_path):
    schemathesis = shutil.which("schemathesis")
    if schemathesis is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    tokens = [{"name": "st", "token_hash": hash_key("schemathesis-token")}]
    node = start(gateway, admin={"tokens": tokens}, token="schemathesis-token")
    t0 = time.monotonic()
    out = subprocess.run(
        [schemathesis, "run", f"http://{node.address}/openapi.json", "--phases", "examples,fuzzing",
         "--max-examples", "3", "--workers", "2", "--mode", "positive", "--seed", "7",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance",
         "--header", "Authorization: Bearer schemathesis-token", "--generation-database", "none", "--no-color",
         "--request-timeout", "20"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    (tmp_path / "schemathesis.txt").write_text(out.stdout + out.stderr)
    summary = "\n".join(out.stdout.splitlines()[-25:])
    failures = out.stdout.split("FAILURES", 1)[-1].split("WARNINGS", 1)[0].split("SUMMARY", 1)[0]
    assert out.returncode == 0, f"schemathesis found problems:\n{failures[:8000]}\n{summary}\n{out.stderr[-2000:]}"
    assert " passed" in summary, summary
    assert not node.gw.stderr_events("admin_error"), node.gw.stderr_events("admin_error")[:2]
    print(f"\nschemathesis: {summary.splitlines()[-1].strip('= ')} in {elapsed:.1f}s")

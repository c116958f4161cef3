"""The config store and the Admin API's semantics, without processes: the flat document (flatten / normalize / nest,
ids, changes, diffs), SQLite and in-memory stores (versions, history, rollback, nothing stored on a rejected change),
the last-known-good copy, Kong's CRUD rules on a document (PUT/PATCH/DELETE, cascades, 409, pagination), the
``gateway.admin`` settings, and the control plane's fork safety (a worker forked while the Admin API thread runs)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time

import pytest

from gwanmun.admin.control import ControlPlane, file_entities, gateway_data, replace_in, rollback_in, validate
from gwanmun.admin.entities import ApiError, Scope, Writer, decode_offset, lookup, output, page
from gwanmun.auth.secrets import PasswordPolicy, hash_password
from gwanmun.config import load_data, load_text
from gwanmun.errors import ConfigError
from gwanmun.store import LastKnownGood
from gwanmun.store import doc as docs
from gwanmun.store.memory import MemoryStore
from gwanmun.store.sqlite import SqliteStore
from tests.fixtures.certs import TestCA

CHEAP = PasswordPolicy(scheme="bcrypt", bcrypt_rounds=4)
_CA = TestCA("store test CA")
_CERT = _CA.issue("a.example.test", "b.example.test")
_PW = hash_password("pw", CHEAP)


def rich() -> dict:
    return {
        "_format_version": "3.0",
        "services": [
            {"name": "orders", "url": "http://orders.internal:8080/v1", "tags": ["team-a"],
             "routes": [{"name": "orders", "paths": ["/orders"], "plugins": [{"name": "cors"}]}],
             "plugins": [{"name": "key-auth"}]},
            {"name": "billing", "host": "billing.up", "routes": [{"name": "billing", "paths": ["/billing"]}]},
        ],
        "routes": [{"name": "legacy", "service": "orders", "hosts": ["Legacy.Example.com"]}],
        "upstreams": [{"name": "billing.up", "targets": [{"target": "10.0.0.1:80"}, {"target": "10.0.0.2", "weight": 50}]}],
        "consumer_groups": [{"name": "gold"}],
        "consumers": [{
            "username": "alice", "groups": ["gold"],
            "keyauth_credentials": [{"key": "alice-key-0123456789"}],
            "basicauth_credentials": [{"username": "alice", "password": _PW}],
            "jwt_secrets": [{"key": "alice-iss", "secret": "s3cr3t"}],
            "acls": [{"group": "admins"}],
            "plugins": [{"name": "request-termination", "config": {"status_code": 429}}],
        }],
        "plugins": [{"name": "correlation-id"}],
        "certificates": [{"cert": _CERT.cert_pem, "key": _CERT.key_pem, "snis": ["a.example.test"]}],
    }


def flat_of(data: dict, previous: dict | None = None) -> dict:
    flat = docs.flatten(data, previous)
    return docs.normalize(flat, load_data(flat).config)


def run(coro):
    return asyncio.run(coro)


# -- the flat document ---------------------------------------------------------------------------------------------


def test_flatten_puts_every_entity_in_its_own_list_with_ids_and_references_by_id():
    flat = flat_of(rich())
    counts = {k: len(v) for k, v in flat.items() if isinstance(v, list)}
    assert counts == {"services": 2, "routes": 3, "upstreams": 1, "targets": 2, "certificates": 1, "snis": 1,
                      "consumers": 1, "consumer_groups": 1, "plugins": 4, "keyauth_credentials": 1,
                      "basicauth_credentials": 1, "jwt_secrets": 1, "acls": 1}
    ids = {k: {e["name"] if "name" in e else e.get("username"): e["id"] for e in v}
           for k, v in flat.items() if isinstance(v, list) and k in ("services", "routes", "consumers")}
    routes = {r["name"]: r for r in flat["routes"]}
    assert routes["orders"]["service"] == ids["services"]["orders"]
    assert routes["legacy"]["service"] == ids["services"]["orders"]  # a reference by name became the id
    assert routes["legacy"]["hosts"] == ["legacy.example.com"]  # normalized as the model reads it
    assert {t["upstream"] for t in flat["targets"]} == {flat["upstreams"][0]["id"]}
    assert flat["targets"][1]["target"] == "10.0.0.2"
    plugins = {p["name"]: p for p in flat["plugins"]}
    assert plugins["cors"]["route"] == routes["orders"]["id"] and plugins["cors"]["service"] is None
    assert plugins["key-auth"]["service"] == ids["services"]["orders"]
    assert plugins["request-termination"]["consumer"] == ids["consumers"]["alice"]
    assert plugins["correlation-id"]["service"] is None
    assert flat["snis"][0]["certificate"] == flat["certificates"][0]["id"]
    for kind in docs.KINDS:
        for e in docs.entities(flat, kind):
            assert len(e["id"]) == 36 and isinstance(e["created_at"], int) and isinstance(e["updated_at"], int)
            for nested in docs.KINDS[kind].nested:
                assert nested not in e
    # the flat document is itself a valid config, with the same meaning
    assert load_data(flat).config.get_service("orders").host == "orders.internal"


def test_ids_are_stable_across_flattens_and_reused_from_the_previous_version():
    a = flat_of(rich())
    b = flat_of(rich())
    assert [e["id"] for k in docs.KINDS for e in docs.entities(a, k)] == \
        [e["id"] for k in docs.KINDS for e in docs.entities(b, k)]
    # an entity created through the API (a random id) keeps that id when a file without ids is synced
    custom = copy.deepcopy(a)
    custom["services"][0]["id"] = "11111111-2222-4333-8444-555555555555"
    for r in custom["routes"]:
        if r["service"] == a["services"][0]["id"]:
            r["service"] = custom["services"][0]["id"]
    for p in custom["plugins"]:
        if p["service"] == a["services"][0]["id"]:
            p["service"] = custom["services"][0]["id"]
    synced = flat_of(rich(), custom)
    assert synced["services"][0]["id"] == "11111111-2222-4333-8444-555555555555"
    assert docs.changes(custom, synced) == []


def test_timestamps_survive_an_unchanged_entity_and_move_on_a_change():
    first = docs.flatten(rich(), None, stamp=1000)
    data = rich()
    data["services"][1]["read_timeout"] = 5000
    second = docs.flatten(data, first, stamp=2000)
    by = {s["name"]: s for s in second["services"]}
    assert by["orders"]["created_at"] == 1000 and by["orders"]["updated_at"] == 1000
    assert by["billing"]["created_at"] == 1000 and by["billing"]["updated_at"] == 2000


def test_nest_round_trips_and_leaves_defaults_out():
    flat = flat_of(rich())
    nested = docs.nest(flat)
    assert "routes" not in nested or [r["name"] for r in nested["routes"]] == []
    orders = next(s for s in nested["services"] if s["name"] == "orders")
    assert sorted(r["name"] for r in orders["routes"]) == ["legacy", "orders"]
    assert orders["plugins"][0]["name"] == "key-auth" and "service" not in orders["plugins"][0]
    assert "retries" not in orders and "created_at" not in orders  # a default and a timestamp
    alice = nested["consumers"][0]
    assert set(alice) >= {"keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls", "plugins"}
    assert nested["certificates"][0]["snis"][0]["name"] == "a.example.test"
    assert [p["name"] for p in nested["plugins"]] == ["correlation-id"]
    text = docs.to_yaml(nested)
    again = flat_of(load_text(text).config.model_dump(mode="json", by_alias=True, exclude={"gateway"}), flat)
    assert docs.changes(flat, again) == []


def test_changes_and_text_diff_mask_secrets():
    old = flat_of(rich())
    data = rich()
    data["consumers"][0]["jwt_secrets"][0]["secret"] = "n3w-s3cr3t"
    data["services"][1]["routes"][0]["paths"] = ["/bills"]
    del data["upstreams"][0]["targets"][1]
    data["consumer_groups"].append({"name": "silver"})
    new = flat_of(data, old)
    ops = sorted((c["op"], c["kind"], c["name"], tuple(c.get("fields", ()))) for c in docs.changes(old, new))
    assert ops == [("create", "consumer_groups", "silver", ()), ("delete", "targets", "10.0.0.2", ()),
                   ("update", "jwt_secrets", "alice-iss", ("secret",)), ("update", "routes", "billing", ("paths",))]
    diff = docs.text_diff(old, new, "v1", "v2")
    assert any(line.startswith("+") and "- /bills" in line for line in diff.splitlines())
    assert "s3cr3t" not in diff and "<secret sha256:" in diff
    masked = docs.masked(new)
    assert masked["certificates"][0]["key"].startswith("<secret sha256:")
    assert masked["keyauth_credentials"][0]["key"].startswith("<secret sha256:")
    assert masked["certificates"][0]["cert"] == new["certificates"][0]["cert"]  # not a secret


# -- stores --------------------------------------------------------------------------------------------------------


async def _commit(store, document, author="t", message="m"):
    async def build(head):
        return document, message

    return await store.commit(build, author)


def test_sqlite_store_versions_history_rollback_and_pruning(tmp_path):
    async def main():
        store = SqliteStore(str(tmp_path / "a" / "s.sqlite3"), history_limit=3)
        await store.open()
        assert await store.pending_migrations() == ["001_config_versions", "002_store_meta"]
        assert await store.migrate() == ["001_config_versions", "002_store_meta"]
        assert await store.migrate() == [] and await store.pending_migrations() == []
        assert await store.head() == 0 and await store.latest() is None
        gw = {}
        data = rich()
        v1 = await replace_in(store, data, gw, author="alice", message="first")
        assert v1.version == 1 and v1.parent is None and v1.author == "alice"
        assert {c["op"] for c in v1.changes} == {"create"}
        assert await replace_in(store, data, gw, author="alice", message="same") is None  # nothing changed
        data2 = copy.deepcopy(data)
        data2["services"][0]["retries"] = 1
        v2 = await replace_in(store, data2, gw, author="bob", message="retries")
        assert (v2.version, v2.parent) == (2, 1)
        assert [(c["op"], c["name"], c["fields"]) for c in v2.changes] == [("update", "orders", ["retries"])]
        # a build that raises stores nothing
        with pytest.raises(ApiError):
            await replace_in(store, {"_format_version": "3.0", "services": [{"name": "x", "url": "ftp://x"}]}, gw,
                             author="c", message="bad")
        assert await store.head() == 2
        v3 = await rollback_in(store, 1, gw, author="carol")
        assert v3.version == 3 and v3.message == "rollback to version 1" and v3.hash == v1.hash
        assert await rollback_in(store, 1, gw, author="carol") is None  # already that config
        with pytest.raises(ApiError) as e:
            await rollback_in(store, 99, gw, author="carol")
        assert e.value.status == 404
        await replace_in(store, data2, gw, author="d", message="4")
        history = await store.history(10)
        assert [v.version for v in history] == [4, 3, 2]  # history_limit 3: version 1 pruned
        assert all(v.doc is None for v in history)
        assert (await store.get(4)).doc["services"][0]["retries"] == 1
        await store.close()
        # another connection (another process: the CLI) sees the same versions
        other = SqliteStore(str(tmp_path / "a" / "s.sqlite3"))
        await other.open()
        assert await other.head() == 4
        await other.close()

    run(main())


def test_sqlite_store_without_schema_says_to_migrate(tmp_path):
    from gwanmun.store import SchemaError

    async def main():
        store = SqliteStore(str(tmp_path / "s.sqlite3"))
        await store.open()
        with pytest.raises(SchemaError, match="migrations up"):
            await store.head()

    run(main())


def test_memory_store_and_last_known_good(tmp_path):
    async def main():
        store = MemoryStore(history_limit=2)
        for i in range(3):
            store.commit_sync({"_format_version": "3.0", "n": i}, "file", f"v{i}")
        assert [v.version for v in await store.history()] == [3, 2]
        v = await _commit(store, {"_format_version": "3.0", "n": 9})
        assert v.version == 4 and (await store.get(4)).doc["n"] == 9
        return v

    v = run(main())
    lkg = LastKnownGood(str(tmp_path / "sub" / "node.lkg.json"))
    assert lkg.load() is None
    lkg.save(v, "memory")
    got, record = lkg.load()
    assert got.version == 4 and got.doc == v.doc and record["store"] == "memory"
    assert oct(os.stat(lkg.path).st_mode & 0o777) == "0o600"
    (tmp_path / "sub" / "node.lkg.json").write_text("{not json")
    assert lkg.load() is None


# -- Kong's CRUD rules on a document ---------------------------------------------------------------------------------


def writer(doc=None) -> Writer:
    return Writer(copy.deepcopy(doc) if doc else docs.empty(), hash_password=lambda pw: hash_password(pw, CHEAP))


def test_create_upsert_update_delete():
    w = writer()
    sid = w.create("services", {"name": "s1", "url": "http://a.test:8080/p"})
    assert len(sid) == 36
    svc = lookup(w.doc, "services", "s1")[1]
    assert svc["url"] == "http://a.test:8080/p"  # stored as given; normalized by validation
    rid = w.create("routes", {"name": "r1", "paths": ["/r"]}, Scope("service", sid))
    assert lookup(w.doc, "routes", "r1")[1]["service"] == sid
    # PUT by name: replaces (defaults for what is left out), keeps id and created_at
    created_at = svc["created_at"]
    pid, created = w.upsert("services", "s1", {"host": "b.test"})
    assert (pid, created) == (sid, False)
    svc = lookup(w.doc, "services", sid)[1]
    assert svc["host"] == "b.test" and "url" not in svc and svc["created_at"] == created_at
    # PUT of a new name creates it; PUT by a new UUID creates it with that id
    nid, created = w.upsert("services", "s2", {"host": "c.test"})
    assert created and lookup(w.doc, "services", "s2")[1]["id"] == nid
    uid = "0b8e3c3e-7f0e-4c7a-9a3e-2f1e1e1e1e1e"
    assert w.upsert("services", uid, {"name": "s3", "host": "d.test"}) == (uid, True)
    # PATCH merges; a url replaces protocol/host/port/path; a plugin's config merges one level
    w.update("services", "s2", {"url": "https://e.test/x"})
    assert lookup(w.doc, "services", "s2")[1]["url"] == "https://e.test/x"
    assert "host" not in lookup(w.doc, "services", "s2")[1]
    plid = w.create("plugins", {"name": "cors", "config": {"origins": ["a"], "max_age": 5}}, Scope("route", rid))
    w.update("plugins", plid, {"config": {"max_age": 10}})
    assert lookup(w.doc, "plugins", plid)[1]["config"] == {"origins": ["a"], "max_age": 10}
    with pytest.raises(ApiError) as e:
        w.update("services", "nope", {})
    assert e.value.status == 404
    # DELETE: absent is fine; a service with routes is refused; a route takes its plugins along
    assert w.delete("services", "nope") is False
    with pytest.raises(ApiError) as e:
        w.delete("services", "s1")
    assert e.value.status == 400 and e.value.body["name"] == "foreign key violation"
    assert w.delete("routes", "r1") is True
    assert docs.entities(w.doc, "plugins") == []
    assert w.delete("services", "s1") is True


def test_conflicts_references_generated_credentials_and_scopes():
    w = writer()
    w.create("services", {"name": "s1", "host": "a.test"})
    with pytest.raises(ApiError) as e:
        w.create("services", {"name": "s1", "host": "b.test"})
    assert e.value.status == 409 and e.value.body["message"] == "UNIQUE violation detected on '{name=\"s1\"}'"
    with pytest.raises(ApiError) as e:
        w.create("routes", {"name": "r", "paths": ["/"], "service": {"name": "missing"}})
    assert e.value.status == 400 and e.value.body["code"] == 4
    with pytest.raises(ApiError) as e:
        w.create("services", {"name": "s9", "host": "a.test", "port": "eighty"})
    assert e.value.status == 400 and list(e.value.body["fields"]) == ["port"]
    with pytest.raises(ApiError) as e:
        w.create("services", {"name": "s9", "host": "a.test", "routes": [{"paths": ["/"]}]})
    assert "routes" in e.value.body["fields"]
    cid = w.create("consumers", {"username": "bob"})
    scope = Scope("consumer", cid)
    kid = w.create("keyauth_credentials", {}, scope)
    key = lookup(w.doc, "keyauth_credentials", kid)[1]["key"]
    assert len(key) == 32
    assert lookup(w.doc, "keyauth_credentials", key, scope)[1]["id"] == kid  # by its key, as Kong
    bid = w.create("basicauth_credentials", {"username": "bob", "password": "hunter2"}, scope)
    assert lookup(w.doc, "basicauth_credentials", bid)[1]["password"].startswith("$2b$")
    jid = w.create("jwt_secrets", {}, scope)
    jwt = lookup(w.doc, "jwt_secrets", jid)[1]
    assert jwt["key"] and jwt["secret"]
    w.create("acls", {"group": "g1"}, scope)
    with pytest.raises(ApiError) as e:
        w.create("acls", {"group": "g1"}, scope)
    assert e.value.status == 409
    # a certificate's snis shorthand creates SNI entities; deleting the consumer takes its credentials along
    cert = w.create("certificates", {"cert": _CERT.cert_pem, "key": _CERT.key_pem, "snis": ["A.example.test"]})
    assert [s["name"] for s in w.doc["snis"]] == ["a.example.test"]
    assert output("certificates", lookup(w.doc, "certificates", cert)[1], w.doc)["snis"] == ["a.example.test"]
    w.delete("consumers", "bob")
    for kind in ("keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls"):
        assert docs.entities(w.doc, kind) == []
    w.delete("certificates", cert)
    assert docs.entities(w.doc, "snis") == []


def test_pagination_offsets_and_tags():
    w = writer()
    for i in range(7):
        w.create("services", {"name": f"s{i}", "host": "a.test", "tags": ["even" if i % 2 == 0 else "odd", "all"]})
    items = [output("services", e) for e in w.doc["services"]]
    first = page(items, "/services", {"size": "3"})
    assert [s["name"] for s in first["data"]] == ["s0", "s1", "s2"]
    assert first["next"] == f"/services?offset={first['offset']}&size=3"
    second = page(items, "/services", {"size": "3", "offset": first["offset"]})
    assert [s["name"] for s in second["data"]] == ["s3", "s4", "s5"]
    # an entity deleted before the next page does not shift it
    items.pop(0)
    third = page(items, "/services", {"size": "3", "offset": second["offset"]})
    assert [s["name"] for s in third["data"]] == ["s6"] and third["next"] is None and "offset" not in third
    assert [s["name"] for s in page(items, "/s", {"tags": "even"})["data"]] == ["s2", "s4", "s6"]
    assert [s["name"] for s in page(items, "/s", {"tags": "even,all"})["data"]] == ["s2", "s4", "s6"]
    assert len(page(items, "/s", {"tags": "even/odd"})["data"]) == 6
    for bad in ({"size": "0"}, {"size": "x"}, {"size": "1001"}, {"offset": "!!"}):
        with pytest.raises(ApiError) as e:
            page(items, "/s", bad)
        assert e.value.status == 400
    with pytest.raises(ApiError):
        decode_offset("bm90IGpzb24")


def test_validation_errors_point_at_the_field_and_at_the_other_entities():
    w = writer()
    sid = w.create("services", {"name": "s1", "host": "a.test"})
    w.create("routes", {"name": "r1", "paths": ["/a"]}, Scope("service", sid))
    doc = w.doc
    doc["routes"][0]["paths"] = ["no-slash"]
    with pytest.raises(ApiError) as e:
        run(validate(doc, {}, ("routes", 0)))
    body = e.value.body
    assert body["name"] == "schema violation" and list(body["fields"]) == ["paths[0]"]
    assert body["errors"][0]["path"] == "routes[0].paths[0]"
    doc["routes"][0]["paths"] = ["/a"]
    doc["services"][0]["fallback"] = {"service": "missing"}
    with pytest.raises(ApiError) as e:
        run(validate(doc, {}, ("routes", 0)))
    assert "services[0].fallback.service" in e.value.body["fields"]


# -- gateway.admin settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("admin, problem", [
    ({"listen": ["0.0.0.0:8001"]}, "not a loopback address"),
    ({"listen": ["10.1.2.3:8001"]}, "not a loopback address"),
    ({"listen": ["admin.internal:8001"]}, "not a loopback address"),
    ({"database": "postgres"}, "needs postgres_dsn"),
    ({"listen": ["127.0.0.1:8001 ssl"]}, "listen flags"),
    ({"tokens": [{"name": "a", "token_hash": "plain"}]}, "token_hash"),
    ({"poll_interval": 0}, "poll_interval"),
], ids=["any-address", "private-ip", "hostname", "postgres-dsn", "ssl-flag", "unhashed-token", "poll"])
def test_admin_settings_are_checked(admin, problem):
    text = "_format_version: '3.0'\ngateway:\n  admin: " + json.dumps(admin) + "\n"
    with pytest.raises(ConfigError) as e:
        load_text(text)
    assert problem in str(e.value)


def test_admin_settings_accepted_forms():
    from gwanmun.auth.secrets import hash_key

    token = {"name": "ops", "token_hash": hash_key("t0k3n"), "role": "read-only"}
    cfg = load_text("_format_version: '3.0'\ngateway:\n  admin: " + json.dumps(
        {"listen": ["0.0.0.0:8001", "[::1]:8002"], "tokens": [token]}) + "\n").config
    assert cfg.gateway.admin.database == "sqlite" and cfg.gateway.admin.tokens[0].role == "read-only"
    assert load_text("_format_version: '3.0'\ngateway:\n  admin:\n    database: off\n").config.gateway.admin.database \
        == "off"
    assert load_text("_format_version: '3.0'\ngateway:\n  admin: {}\n").config.gateway.admin.listen == \
        ["127.0.0.1:8001"]
    with pytest.raises(ConfigError, match="gwanmun calls this setting 'admin.listen'"):
        load_text("_format_version: '3.0'\ngateway:\n  admin_listen: ['127.0.0.1:8001']\n")


# -- the control plane in-process: DB-less view, and forking while its thread runs ------------------------------------


def _node(tmp_path, admin: dict, entities: str = "") -> tuple[str, object]:
    path = tmp_path / "node.yaml"
    path.write_text("_format_version: '3.0'\ngateway:\n  admin: " + json.dumps(admin) + "\n" + entities)
    from gwanmun.config import load_file

    return str(path), load_file(str(path))


def _http(address: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import http.client

    host, port = address.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request(method, path, body=json.dumps(body) if body is not None else None)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else {}


ENTITIES = "services:\n- name: s1\n  url: http://127.0.0.1:9\n  routes:\n  - name: r1\n    paths: [/a]\n"


def test_dbless_control_plane_serves_the_file_and_post_config(tmp_path):
    path, node = _node(tmp_path, {"listen": ["127.0.0.1:0"], "database": "off"}, ENTITIES)
    kicks = []
    cp = ControlPlane(path, node, kick=lambda: kicks.append(1))
    cp.start()
    try:
        assert cp.combine(node) is node  # the file, as it is
        addr = cp.addresses[0]
        status, body = _http(addr, "GET", "/routes")
        assert status == 200 and [r["name"] for r in body["data"]] == ["r1"]
        assert body["data"][0]["service"]["id"] == _http(addr, "GET", "/services/s1")[1]["id"]
        status, body = _http(addr, "POST", "/services", {"name": "s2", "host": "b.test"})
        assert status == 405 and "POST /config" in body["message"]
        status, body = _http(addr, "POST", "/config", {"_format_version": "3.0", "services": [
            {"name": "s9", "url": "http://127.0.0.1:9", "routes": [{"name": "r9", "paths": ["/z"]}]}]})
        assert status == 201 and body["version"] == 2 and [s["name"] for s in body["services"]] == ["s9"]
        assert kicks == [1]
        served = cp.combine(node)
        assert [r.name for r, _ in served.config.all_routes()] == ["r9"]
        assert served.config.gateway.admin.database == "off"
        # the file changed since: it wins
        (tmp_path / "node.yaml").write_text((tmp_path / "node.yaml").read_text().replace("/a]", "/b]"))
        from gwanmun.config import load_file

        node2 = load_file(path)
        assert cp.combine(node2) is node2
        assert _http(addr, "GET", "/routes/r1")[1]["paths"] == ["/b"]
        assert [v["version"] for v in _http(addr, "GET", "/config/versions")[1]["data"]] == [3, 2, 1]
    finally:
        cp.stop()


def test_a_fork_while_the_admin_thread_works_leaves_the_child_clean(tmp_path):
    """Workers are forked while the control thread serves: the child must not deadlock on a lock that thread held
    (the fork gate), and must not keep the admin listener or the epoll descriptor of that thread."""
    path, node = _node(tmp_path, {"listen": ["127.0.0.1:0"]}, ENTITIES)
    cp = ControlPlane(path, node, kick=lambda: None)
    cp.start()
    try:
        addr = cp.addresses[0]
        listener_inode = os.fstat(cp._sockets[0].fileno()).st_ino
        import threading

        stop = threading.Event()
        errors = []

        def hammer():
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    status, _ = _http(addr, "PUT", f"/services/h{i % 5}", {"host": f"h{i}.test"})
                    assert status == 200
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                    return

        t = threading.Thread(target=hammer)
        t.start()
        try:
            for _ in range(25):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child: log (takes the logging lock), report its sockets, exit
                    code = 0
                    try:
                        os.close(r)
                        import logging

                        logging.getLogger("gwanmun").info("child alive")
                        inodes = []
                        for fd in os.listdir("/proc/self/fd"):
                            try:
                                inodes.append(os.fstat(int(fd)).st_ino)
                            except OSError:
                                pass
                        os.write(w, json.dumps(listener_inode in inodes).encode())
                    except BaseException:  # noqa: BLE001
                        code = 1
                    os._exit(code)
                os.close(w)
                deadline = time.monotonic() + 10
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                    assert time.monotonic() < deadline, "a forked child hung"
                    time.sleep(0.005)
                held = json.loads(os.read(r, 100) or b"null")
                os.close(r)
                assert os.waitstatus_to_exitcode(status) == 0
                assert held is False, "the child kept the admin listener open"
        finally:
            stop.set()
            t.join(10)
        assert not errors
        assert _http(addr, "GET", "/status")[0] == 200
    finally:
        cp.stop()


def test_file_entities_round_trip_through_the_store_format():
    node = load_text(json.dumps(rich()))
    data = file_entities(node)
    flat = flat_of(data)
    again = load_data({**flat, "gateway": gateway_data(node)})
    assert sorted(r.name for r, _ in again.config.all_routes()) == ["billing", "legacy", "orders"]

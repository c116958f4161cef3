"""The memo demo (examples/memo): the token service and the memo service as real processes, with passports minted by
``PassportSigner`` standing in for the gateway (what its passport plugin will do after the jwt plugin)."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from gwanmun.passport import PASSPORT_HEADER, PassportSigner, generate_key

ROOT = Path(__file__).resolve().parents[2]
MEMO = ROOT / "examples" / "memo"
SECRET = "memo-demo-secret-0123456789abcdef"  # >= 32 bytes
CONSUMER = "memo-app"  # the gateway consumer that owns the jwt credential keyed "memo-issuer"


class Service:
    """A demo service as a subprocess on 127.0.0.1 port 0; ready when it prints its address."""

    def __init__(self, script: str, *args: str, log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with log.open("wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, str(MEMO / script), "--port", "0", *args],
                stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT,
            )
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = b""
        if sel.select(timeout=15):
            line = self.proc.stdout.readline()
        sel.close()
        if b" listening on http://" not in line:
            self.stop()
            raise RuntimeError(f"{script} did not start: {line!r}\n{log.read_text()}")
        host, port = line.split(b"http://", 1)[1].strip().decode().rsplit(":", 1)
        self.host, self.port = host, int(port)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None, resp
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class JWKSEndpoint:
    """The gateway's JWKS URL, served from a thread (the gateway's own endpoint comes with its plugin)."""

    def __init__(self, jwks: dict) -> None:
        self.jwks = jwks
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def gw_key() -> dict[str, str]:
    return generate_key("EdDSA", kid="gw-1")


@pytest.fixture(scope="module")
def signer(gw_key) -> PassportSigner:
    return PassportSigner([gw_key], ttl=60)


@pytest.fixture(scope="module")
def jwks_url(signer) -> Iterator[str]:
    endpoint = JWKSEndpoint(signer.jwks())
    yield endpoint.url
    endpoint.close()


@pytest.fixture(scope="module")
def token_svc(tmp_path_factory) -> Iterator[Service]:
    svc = Service("token_service.py", "--secret", SECRET, log=tmp_path_factory.mktemp("memo") / "token.log")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def memo_svc(jwks_url, tmp_path_factory) -> Iterator[Service]:
    svc = Service("memo_service.py", "--jwks", jwks_url, "--audience", "memo",
                  log=tmp_path_factory.mktemp("memo") / "memo.log")
    yield svc
    svc.stop()


def login(token_svc: Service, username: str, password: str) -> str:
    status, body, _ = token_svc.request("POST", "/token", {"username": username, "password": password})
    assert status == 200, body
    return body["access_token"]


def passport_for(signer: PassportSigner, access_token: str, audience: str = "memo", request_id: str = "rid") -> str:
    """What the gateway does: verify the client's JWT (the jwt plugin), then mint a passport for the service."""
    claims = jwt.decode(access_token, SECRET, algorithms=["HS256"], issuer="memo-issuer")
    return signer.mint(CONSUMER, claims["sub"], claims["groups"], {}, request_id, audience)


@pytest.fixture(scope="module")
def alice(token_svc, signer) -> str:
    return passport_for(signer, login(token_svc, "alice", "wonderland"))


@pytest.fixture(scope="module")
def bob(token_svc, signer) -> str:
    return passport_for(signer, login(token_svc, "bob", "builder"))


# ------------------------------------------------------------------------------------------------- token service


def test_token_service_issues_hs256_jwt(token_svc):
    token = login(token_svc, "alice", "wonderland")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["iss"] == "memo-issuer" and claims["sub"] == "alice"
    assert claims["groups"] == ["users", "admins"]
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 10


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/token", {"username": "alice", "password": "wrong"}, 401),
        ("POST", "/token", {"username": "mallory", "password": "wonderland"}, 401),
        ("POST", "/token", {"username": "alice"}, 400),
        ("POST", "/token", ["alice", "wonderland"], 400),
        ("GET", "/token", None, 405),
        ("POST", "/other", {"username": "alice", "password": "wonderland"}, 404),
    ],
    ids=["bad-password", "unknown-user", "no-password", "not-object", "get", "path"],
)
def test_token_service_rejects(token_svc, method, path, body, status):
    got, answer, resp = token_svc.request(method, path, body)
    assert got == status
    assert resp.getheader("Content-Type") == "application/json" and isinstance(answer["message"], str)
    if status == 401:
        assert answer == {"message": "invalid username or password"}


# ------------------------------------------------------------------------------------------------- memo service


def test_crud(memo_svc, alice):
    auth = {PASSPORT_HEADER: alice, "X-Request-ID": "test-crud"}
    status, memo, resp = memo_svc.request("POST", "/memos", {"title": "groceries", "body": "milk"}, auth)
    assert status == 201 and memo["title"] == "groceries" and memo["body"] == "milk"
    assert resp.getheader("Location") == f"/memos/{memo['id']}"
    path = f"/memos/{memo['id']}"
    assert memo_svc.request("GET", path, headers=auth)[:2] == (200, memo)
    status, listing, _ = memo_svc.request("GET", "/memos", headers=auth)
    assert status == 200 and memo in listing["memos"]
    status, updated, _ = memo_svc.request("PUT", path, {"title": "groceries", "body": "milk, eggs"}, auth)
    assert status == 200 and updated["body"] == "milk, eggs" and updated["created_at"] == memo["created_at"]
    status, body, _ = memo_svc.request("DELETE", path, headers=auth)
    assert (status, body) == (204, None)
    assert memo_svc.request("GET", path, headers=auth)[0] == 404
    assert memo_svc.request("DELETE", path, headers=auth)[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/memos", {"body": "no title"}, 400),
        ("POST", "/memos", {"title": 7}, 400),
        ("POST", "/memos", "text", 400),
        ("PUT", "/memos/999999", {"title": "x"}, 404),
        ("GET", "/memos/abc", None, 404),
        ("PATCH", "/memos", None, 405),
        ("GET", "/elsewhere", None, 404),
    ],
    ids=["no-title", "title-type", "not-object", "put-missing", "bad-id", "method", "path"],
)
def test_memo_requests_rejected(memo_svc, alice, method, path, body, status):
    got, answer, _ = memo_svc.request(method, path, body, {PASSPORT_HEADER: alice})
    assert got == status and isinstance(answer["message"], str)


def test_memos_isolated_per_user(memo_svc, alice, bob):
    status, mine, _ = memo_svc.request("POST", "/memos", {"title": "alice's"}, {PASSPORT_HEADER: alice})
    assert status == 201
    path = f"/memos/{mine['id']}"
    as_bob = {PASSPORT_HEADER: bob}
    assert memo_svc.request("GET", path, headers=as_bob)[0] == 404
    assert memo_svc.request("PUT", path, {"title": "bob was here"}, as_bob)[0] == 404
    assert memo_svc.request("DELETE", path, headers=as_bob)[0] == 404
    status, listing, _ = memo_svc.request("GET", "/memos", headers=as_bob)
    assert status == 200 and all(m["id"] != mine["id"] for m in listing["memos"])
    status, theirs, _ = memo_svc.request("POST", "/memos", {"title": "bob's"}, as_bob)
    assert status == 201
    _, alices, _ = memo_svc.request("GET", "/memos", headers={PASSPORT_HEADER: alice})
    ids = {m["id"] for m in alices["memos"]}
    assert mine["id"] in ids and theirs["id"] not in ids
    assert memo_svc.request("GET", path, headers={PASSPORT_HEADER: alice})[1]["title"] == "alice's"


def test_no_passport_is_401(memo_svc):
    for method, path in (("GET", "/memos"), ("POST", "/memos"), ("GET", "/memos/1"), ("GET", "/nowhere")):
        status, body, _ = memo_svc.request(method, path, {"title": "x"} if method == "POST" else None)
        assert (status, body) == (401, {"message": "passport required"}), (method, path)


def test_authorization_header_is_ignored(memo_svc, token_svc, alice):
    """The client's own credential, or even a valid passport sent as a bearer token, is not a passport."""
    access = login(token_svc, "alice", "wonderland")
    for value in (f"Bearer {access}", f"Bearer {alice}", alice):
        status, body, _ = memo_svc.request("GET", "/memos", headers={"Authorization": value})
        assert (status, body) == (401, {"message": "passport required"})
    status, _, _ = memo_svc.request("GET", "/memos", headers={"Authorization": "Bearer junk", PASSPORT_HEADER: alice})
    assert status == 200  # with a passport, Authorization changes nothing


def test_invalid_passports_are_401(memo_svc, token_svc, signer, gw_key):
    access = login(token_svc, "carol", "singer")
    stranger = PassportSigner([generate_key("EdDSA", kid="gw-1")])  # same kid, another key
    expired = PassportSigner([gw_key], clock=lambda: time.time() - 3600)
    cases = {
        "other-audience": passport_for(signer, access, audience="orders"),
        "foreign-key": passport_for(stranger, access),
        "expired": passport_for(expired, access),
        "client-jwt": access,
        "garbage": "not.a.passport",
    }
    for name, token in cases.items():
        status, body, _ = memo_svc.request("GET", "/memos", headers={PASSPORT_HEADER: token})
        assert (status, body) == (401, {"message": "invalid passport"}), name
    log = memo_svc.log.read_text()
    for reason in ("passport is not for audience 'memo'", "bad signature", "passport expired", "algorithm 'HS256' is not allowed",
                   "malformed passport"):
        assert f"rejected passport: {reason}" in log, reason


def test_request_body_not_left_on_keep_alive(memo_svc, alice):
    """A 401 before the body is used must not leave the body to be read as the next request."""
    conn = http.client.HTTPConnection(memo_svc.host, memo_svc.port, timeout=10)
    try:
        conn.request("POST", "/memos", body=b'{"title": "x"}', headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 401
        resp.read()
        conn.request("GET", "/memos", headers={PASSPORT_HEADER: alice})
        resp = conn.getresponse()
        assert resp.status == 200 and "memos" in json.loads(resp.read())
    finally:
        conn.close()


def test_jwks_file_and_key_retirement(tmp_path, token_svc):
    """``--jwks FILE``: verified against the file, re-read when it changes (a retired key stops working)."""
    old, new = generate_key("ES256", kid="old"), generate_key("EdDSA", kid="new")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(PassportSigner([new, old]).jwks()))
    svc = Service("memo_service.py", "--jwks", str(jwks_file), "--audience", "memo", log=tmp_path / "memo.log")
    try:
        access = login(token_svc, "bob", "builder")
        by_old = passport_for(PassportSigner([old]), access)
        by_new = passport_for(PassportSigner([new, old]), access)
        for token in (by_old, by_new):
            assert svc.request("GET", "/memos", headers={PASSPORT_HEADER: token})[0] == 200
        jwks_file.write_text(json.dumps(PassportSigner([new]).jwks()))  # old retired
        assert svc.request("GET", "/memos", headers={PASSPORT_HEADER: by_old})[0] == 401
        assert svc.request("GET", "/memos", headers={PASSPORT_HEADER: by_new})[0] == 200
        assert "unknown kid 'old'" in (tmp_path / "memo.log").read_text()
    finally:
        svc.stop()


def test_memo_service_needs_a_jwks(tmp_path):
    proc = subprocess.run([sys.executable, str(MEMO / "memo_service.py"), "--port", "0", "--jwks",
                           str(tmp_path / "missing.json")], capture_output=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and b"--jwks" in proc.stderr


def test_token_service_needs_a_long_secret():
    proc = subprocess.run([sys.executable, str(MEMO / "token_service.py"), "--port", "0", "--secret", "short"],
                          capture_output=True, timeout=30, cwd=ROOT, env={**os.environ, "MEMO_TOKEN_SECRET": ""})
    assert proc.returncode == 2 and b"32 bytes" in proc.stderr


def test_standin_mints_what_the_memo_service_accepts(tmp_path, token_svc):
    """examples/memo/standin.py (the README's stand-in for the gateway): init, then passport for a client JWT."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMO_TOKEN_SECRET": SECRET}
    run = lambda *args: subprocess.run([sys.executable, str(MEMO / "standin.py"), *args], capture_output=True,  # noqa: E731
                                       timeout=30, cwd=ROOT, env=env, text=True)
    assert run("init", str(tmp_path)).returncode == 0
    assert (tmp_path / "key.json").stat().st_mode & 0o077 == 0  # the private key is not world-readable
    svc = Service("memo_service.py", "--jwks", str(tmp_path / "jwks.json"), log=tmp_path / "memo.log")
    try:
        made = run("passport", str(tmp_path), login(token_svc, "carol", "singer"))
        assert made.returncode == 0, made.stderr
        status, memo, _ = svc.request("POST", "/memos", {"title": "hi"}, {PASSPORT_HEADER: made.stdout.strip()})
        assert status == 201 and memo["title"] == "hi"
        bad = run("passport", str(tmp_path), "not-a-jwt")
        assert bad.returncode == 1 and "401" in bad.stderr
    finally:
        svc.stop()

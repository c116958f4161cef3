"""``gwanmun demo``: the memo demo on this machine: a token service, a memo service and the gateway in front.

The token service issues a JWT for a username and password; the gateway checks it (the ``jwt`` plugin), then sends
the memo service a passport instead (the ``passport`` plugin); the memo service trusts only the passport, verified
against the gateway's JWKS. Everything is made fresh in a temp dir: the passport signing key, the token secret and
the gateway config (printed, to read). Ctrl-C stops all three.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .passport import generate_key

MEMO = Path(__file__).resolve().parent.parent / "examples" / "memo"


def config(port: int, token_port: int, memo_port: int, key: dict, access_log: str) -> dict:
    return {
        "_format_version": "3.0",
        "gateway": {"listen": [f"127.0.0.1:{port}"], "access_log": access_log, "passport": {"keys": [key]}},
        "consumers": [{
            "username": "memo-app",
            "jwt_secrets": [{"key": "memo-issuer", "algorithm": "HS256", "secret": "${MEMO_TOKEN_SECRET}"}],
        }],
        "services": [
            {"name": "token", "url": f"http://127.0.0.1:{token_port}",
             "routes": [{"name": "token", "paths": ["/token"], "methods": ["POST"], "strip_path": False}]},
            {"name": "memo", "url": f"http://127.0.0.1:{memo_port}",
             "routes": [{"name": "memos", "paths": ["/memos"], "strip_path": False, "plugins": [
                 {"name": "jwt", "config": {"claims_to_verify": ["exp"]}},
                 {"name": "passport", "config": {"username_claim": "sub", "require_authentication": True}},
             ]}]},
        ],
    }


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gwanmun demo: {url} exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"gwanmun demo: {url} did not answer within {timeout:.0f}s; see {log}")


def _call(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            data = r.read()
            return r.status, json.loads(data) if data else {}
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, json.loads(data) if data else {}


def check(base: str) -> None:
    """The demo's flow, end to end (``gwanmun demo --check``); raises AssertionError on a wrong answer."""
    status, doc = _call("POST", f"{base}/token", {"username": "alice", "password": "wonderland"})
    assert status == 200, (status, doc)
    token = doc["access_token"]
    assert _call("GET", f"{base}/memos")[0] == 401  # the gateway refuses a request without a token
    status, memo = _call("POST", f"{base}/memos", {"title": "groceries", "body": "milk"}, token)
    assert status == 201, (status, memo)
    status, memos = _call("GET", f"{base}/memos", token=token)
    assert status == 200 and [m["title"] for m in memos["memos"]] == ["groceries"], memos
    status, doc = _call("POST", f"{base}/token", {"username": "bob", "password": "builder"})
    bob = doc["access_token"]
    status, theirs = _call("GET", f"{base}/memos", token=bob)
    assert status == 200 and theirs["memos"] == [], theirs  # memos are per user
    assert _call("GET", f"{base}/memos/{memo['id']}", token=bob)[0] == 404


def main(port: int = 8000, token_port: int = 9101, memo_port: int = 9102, run_check: bool = False) -> int:
    if not MEMO.is_dir():
        print(f"gwanmun demo: {MEMO} not found (the demo runs from a source checkout: pip install -e .)",
              file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="gwanmun-demo-"))
    env = dict(os.environ, MEMO_TOKEN_SECRET=secrets.token_urlsafe(32), PYTHONUNBUFFERED="1")
    key = generate_key("EdDSA", "demo-1")
    cfg_path = work / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(config(port, token_port, memo_port, key, str(work / "access.log")),
                                       sort_keys=False))
    os.chmod(cfg_path, 0o600)  # it holds the passport signing key
    base = f"http://127.0.0.1:{port}"
    py = sys.executable
    procs = [
        _start([py, str(MEMO / "token_service.py"), "--port", str(token_port)], env, work / "token.log"),
        _start([py, str(MEMO / "memo_service.py"), "--port", str(memo_port), "--audience", "memo",
                "--jwks", f"{base}/.well-known/gwanmun/jwks.json"], env, work / "memo.log"),
        _start([py, "-m", "gwanmun", "run", "--config", str(cfg_path), "--workers", "1",
                "--pid-file", str(work / "gwanmun.pid")], env, work / "gateway.log"),
    ]
    try:
        _wait_http(f"http://127.0.0.1:{token_port}/", procs[0], work / "token.log")
        _wait_http(f"http://127.0.0.1:{memo_port}/", procs[1], work / "memo.log")
        _wait_http(f"{base}/.well-known/gwanmun/jwks.json", procs[2], work / "gateway.log")
        if run_check:
            check(base)
            print("gwanmun demo: check passed")
            return 0
        print(DEMO_TEXT.format(base=base, work=work, token_port=token_port, memo_port=memo_port), flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM}) if hasattr(signal, "sigwait") else time.sleep(1e9)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


DEMO_TEXT = """
gwanmun memo demo: the gateway on {base}, in front of
  token service  127.0.0.1:{token_port}  POST /token   (users alice/wonderland, bob/builder, carol/singer)
  memo service   127.0.0.1:{memo_port}  /memos CRUD    (trusts only the gateway's passport)
Config, logs and the signing key: {work}   (gateway.yaml: the jwt and passport plugins on route "memos")

Try:
  TOKEN=$(curl -s {base}/token -d '{{"username": "alice", "password": "wonderland"}}' \\
          | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
  curl -i {base}/memos                                                     # 401: the gateway wants a token
  curl -i {base}/memos -H "Authorization: Bearer $TOKEN" -d '{{"title": "groceries", "body": "milk"}}'
  curl    {base}/memos -H "Authorization: Bearer $TOKEN"
  curl    {base}/.well-known/gwanmun/jwks.json                            # what the memo service verifies with
  curl -i 127.0.0.1:{memo_port}/memos -H "Authorization: Bearer $TOKEN"          # 401: the service wants a passport

Ctrl-C stops everything.
"""

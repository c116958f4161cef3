"""Memo demo, business service: per-user memos, trusting only the gateway's passport.

    python examples/memo/memo_service.py --port 9102 --jwks http://127.0.0.1:8000/.well-known/jwks.json --audience memo
    python examples/memo/memo_service.py --port 9102 --jwks jwks.json --audience memo      # a JWKS file

GET /memos                  200 {"memos": [...]}   (yours, oldest first)
POST /memos {title, body}   201 the memo (Location: /memos/<id>)
GET /memos/<id>             200 the memo
PUT /memos/<id> {title, body}  200 the memo
DELETE /memos/<id>          204

Every request must carry a passport in ``X-Passport`` (``gwanmun.passport.PASSPORT_HEADER``), verified with
``gwanmun.passport.verify`` against the gateway's JWKS for this service's audience; otherwise 401. A memo belongs to
the passport's (``sub``, ``preferred_username``): the gateway consumer and the user it vouches for. The
``Authorization`` header is never read: whatever credential the client used stayed at the gateway. Memos are kept in
memory; another user's memo answers 404, as if it did not exist.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpjson import HTTPError, JSONHandler, serve  # noqa: E402

try:
    from gwanmun.passport import PASSPORT_HEADER, JWKSUnavailable, PassportError, verify
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from gwanmun.passport import PASSPORT_HEADER, JWKSUnavailable, PassportError, verify

MAX_TITLE = 200
MAX_TEXT = 10_000

Owner = tuple[str, str | None]


class JWKSFile:
    """A JWKS file, re-read when it changes (so a key rotation does not need a restart)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._jwks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.get()  # fail at start, not on the first request

    def get(self) -> dict[str, Any]:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    with open(self.path, "rb") as f:
                        jwks = json.load(f)
                    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
                        raise ValueError(f"{self.path}: not a JWK Set")
                    self._jwks, self._stamp = jwks, stamp
        return self._jwks


class MemoStore:
    """Memos per owner, in memory, thread-safe."""

    def __init__(self) -> None:
        self._memos: dict[Owner, dict[int, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def list(self, owner: Owner) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._memos.get(owner, {}).values()]

    def get(self, owner: Owner, memo_id: int) -> dict[str, Any] | None:
        with self._lock:
            memo = self._memos.get(owner, {}).get(memo_id)
            return dict(memo) if memo else None

    def create(self, owner: Owner, title: str, text: str) -> dict[str, Any]:
        now = _now()
        with self._lock:
            memo = {"id": next(self._ids), "title": title, "body": text, "created_at": now, "updated_at": now}
            self._memos.setdefault(owner, {})[memo["id"]] = memo
            return dict(memo)

    def update(self, owner: Owner, memo_id: int, title: str, text: str) -> dict[str, Any] | None:
        with self._lock:
            memo = self._memos.get(owner, {}).get(memo_id)
            if memo is None:
                return None
            memo.update(title=title, body=text, updated_at=_now())
            return dict(memo)

    def delete(self, owner: Owner, memo_id: int) -> bool:
        with self._lock:
            return self._memos.get(owner, {}).pop(memo_id, None) is not None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(req: dict[str, Any]) -> tuple[str, str]:
    title, text = req.get("title"), req.get("body", "")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
        raise HTTPError(400, f"title: a non-empty string of at most {MAX_TITLE} characters is required")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise HTTPError(400, f"body: a string of at most {MAX_TEXT} characters")
    return title, text


def make_handler(jwks: str | JWKSFile, audience: str, issuer: str, store: MemoStore) -> type[JSONHandler]:
    class MemoHandler(JSONHandler):
        service = "memo"

        def owner(self) -> Owner:
            token = self.headers.get(PASSPORT_HEADER)
            if not token:
                raise HTTPError(401, "passport required")
            try:
                keys = jwks if isinstance(jwks, str) else jwks.get()
                claims = verify(token, keys, audience, issuer)
            except (JWKSUnavailable, OSError, ValueError) as exc:  # the JWKS, not the passport, is the problem
                self.log_message("%s", exc)
                raise HTTPError(503, "cannot verify passports right now") from None
            except PassportError as exc:
                self.log_message("rejected passport: %s", exc)  # the reason is for our logs, not the client
                raise HTTPError(401, "invalid passport") from None
            return claims["sub"], claims.get("preferred_username")

        def handle_json(self, body: bytes):
            owner = self.owner()  # before routing: an unauthenticated client learns nothing
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/memos":
                if self.command == "GET":
                    return 200, {"memos": store.list(owner)}, {}
                if self.command == "POST":
                    memo = store.create(owner, *_fields(self.parse_json(body)))
                    return 201, memo, {"Location": f"/memos/{memo['id']}"}
                raise HTTPError(405, "use GET or POST", headers={"Allow": "GET, POST"})
            head, _, tail = path.rpartition("/")
            if head != "/memos" or not tail.isascii() or not tail.isdigit():
                raise HTTPError(404, "not found")
            memo_id = int(tail)
            if self.command == "GET":
                memo = store.get(owner, memo_id)
            elif self.command == "PUT":
                memo = store.update(owner, memo_id, *_fields(self.parse_json(body)))
            elif self.command == "DELETE":
                if not store.delete(owner, memo_id):
                    raise HTTPError(404, "no such memo")
                return 204, None, {}
            else:
                raise HTTPError(405, "use GET, PUT or DELETE", headers={"Allow": "GET, PUT, DELETE"})
            if memo is None:
                raise HTTPError(404, "no such memo")
            return 200, memo, {}

    return MemoHandler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="memo demo: memo service (trusts only the gateway's passport)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9102, help="0 picks a free port (printed on stdout)")
    ap.add_argument("--jwks", required=True, help="the gateway's JWKS: an http(s) URL or a JSON file")
    ap.add_argument("--audience", default="memo", help="this service's name in the passport's aud")
    ap.add_argument("--issuer", default="gwanmun", help="the passport's iss")
    args = ap.parse_args(argv)
    try:
        jwks: str | JWKSFile = (args.jwks if args.jwks.startswith(("http://", "https://"))
                                else JWKSFile(args.jwks))
    except (OSError, ValueError) as exc:
        ap.error(f"--jwks: {exc}")
    serve(make_handler(jwks, args.audience, args.issuer, MemoStore()), args.host, args.port)


if __name__ == "__main__":
    main()

"""Memo demo, token service: trades a username and password for a short HS256 JWT.

    python examples/memo/token_service.py --port 9101 --secret "$MEMO_TOKEN_SECRET"

POST /token {"username": "alice", "password": "wonderland"}
  200 {"access_token": "<jwt>", "token_type": "Bearer", "expires_in": 900}
  401 {"message": "invalid username or password"}

The JWT is what the *client* sends to the gateway (``Authorization: Bearer <jwt>``). Its ``iss`` (default
``memo-issuer``) is the key the gateway's jwt plugin looks the credential up by, and the HS256 secret is that
credential's secret. The gateway verifies it and forwards a passport instead: the memo service never sees this JWT.

Users are built in (see ``USERS``); passwords are stored as scrypt hashes, never in clear. Make a new hash with
``python examples/memo/token_service.py --hash-password``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys
import time
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpjson import HTTPError, JSONHandler, serve  # noqa: E402

TOKEN_TTL = 15 * 60  # seconds
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB and ~50 ms per hash: the usual interactive-login setting

# username -> (password hash, groups). The demo passwords are alice/wonderland, bob/builder, carol/singer.
USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("scrypt$16384$8$1$Vox5Z+FHoSw2v02r0kZuNQ==$7agcyDp5QKIsUZGpE6v6UfrjEX/AHg/km4KSWfjCaUE=",
              ["users", "admins"]),
    "bob": ("scrypt$16384$8$1$zHwiywlLESmkMEZDMtvo6A==$34bjS2LZXoGafLRhudk6iaT0GpcwMiUmthpTjtZAU5c=", ["users"]),
    "carol": ("scrypt$16384$8$1$SnnDgjGCM0rWEk9EmLZjpA==$zQ88+R6JrtdMCyyjn1osFYsd07mEbLWyyI5xT+LEBTA=", ["users"]),
}


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    n, r, p = SCRYPT["n"], SCRYPT["r"], SCRYPT["p"]
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                         dklen=len(expected))
    return hmac.compare_digest(got, expected)


_DUMMY = USERS["alice"][0]  # unknown users cost one scrypt too, so timing does not reveal who exists


def authenticate(username: str, password: str) -> list[str] | None:
    """The user's groups when the password is right, else None."""
    stored, groups = USERS.get(username, (_DUMMY, None))
    ok = check_password(password, stored)
    return groups if ok and groups is not None else None


def make_handler(secret: str, issuer: str) -> type[JSONHandler]:
    class TokenHandler(JSONHandler):
        service = "token"

        def handle_json(self, body: bytes):
            path = self.path.split("?", 1)[0]
            if path != "/token":
                raise HTTPError(404, "not found")
            if self.command != "POST":
                raise HTTPError(405, "use POST", headers={"Allow": "POST"})
            req = self.parse_json(body)
            username, password = req.get("username"), req.get("password")
            if not isinstance(username, str) or not isinstance(password, str):
                raise HTTPError(400, "username and password (strings) are required")
            groups = authenticate(username, password)
            if groups is None:
                raise HTTPError(401, "invalid username or password")
            now = int(time.time())
            claims = {"iss": issuer, "sub": username, "iat": now, "exp": now + TOKEN_TTL, "groups": groups}
            token = jwt.encode(claims, secret, algorithm="HS256")
            return 200, {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_TTL}, {
                "Cache-Control": "no-store"}

    return TokenHandler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="memo demo: token service (POST /token)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9101, help="0 picks a free port (printed on stdout)")
    ap.add_argument("--secret", default=os.environ.get("MEMO_TOKEN_SECRET"),
                    help="HS256 secret shared with the gateway's jwt credential, >= 32 bytes "
                         "(default: $MEMO_TOKEN_SECRET)")
    ap.add_argument("--issuer", default="memo-issuer", help="the iss claim: the gateway's jwt credential key")
    ap.add_argument("--hash-password", action="store_true", help="read a password, print its hash for USERS, exit")
    args = ap.parse_args(argv)
    if args.hash_password:
        print(hash_password(getpass.getpass("password: ")))
        return
    if not args.secret or len(args.secret.encode()) < 32:
        ap.error("--secret (or $MEMO_TOKEN_SECRET) of at least 32 bytes is required (RFC 7518 3.2)")
    serve(make_handler(args.secret, args.issuer), args.host, args.port)


if __name__ == "__main__":
    main()

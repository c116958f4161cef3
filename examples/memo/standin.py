"""Stand in for the gateway's jwt + passport plugins from a shell, to try the memo services before they are wired.

    python examples/memo/standin.py init DIR                      # DIR/key.json (private), DIR/jwks.json (public)
    python examples/memo/standin.py passport DIR ACCESS_TOKEN     # verify the client's JWT, print a passport

``passport`` does what the gateway does per request: check the client's HS256 JWT with the credential secret
(``--secret``, default ``$MEMO_TOKEN_SECRET``) and issuer, then mint a passport for ``--audience`` with
``gwanmun.passport.PassportSigner``: consumer ``memo-app``, the JWT's ``sub`` as username, its ``groups``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jwt

try:
    from gwanmun.passport import PassportSigner, generate_key
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from gwanmun.passport import PassportSigner, generate_key


def init(directory: Path, algorithm: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key(algorithm)
    key_file = directory / "key.json"
    key_file.touch(mode=0o600)
    key_file.write_text(json.dumps(key, indent=2))
    (directory / "jwks.json").write_text(json.dumps(PassportSigner([key]).jwks(), indent=2))
    print(f"{key_file} (private, kid {key['kid']}) and {directory / 'jwks.json'} written")


def passport(directory: Path, token: str, secret: str, issuer: str, consumer: str, audience: str) -> None:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=issuer, options={"require": ["exp", "sub"]})
    except jwt.InvalidTokenError as exc:
        sys.exit(f"401: the client's JWT is not valid: {exc}")
    signer = PassportSigner([json.loads((directory / "key.json").read_text())])
    print(signer.mint(consumer, claims["sub"], claims.get("groups", []), {}, None, audience))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="memo demo: mint passports the way the gateway will")
    sub = ap.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="make a signing key and its JWKS")
    p_init.add_argument("dir", type=Path)
    p_init.add_argument("--algorithm", choices=["EdDSA", "ES256"], default="EdDSA")
    p_pass = sub.add_parser("passport", help="verify a client JWT and print a passport for it")
    p_pass.add_argument("dir", type=Path)
    p_pass.add_argument("token")
    p_pass.add_argument("--secret", default=os.environ.get("MEMO_TOKEN_SECRET"))
    p_pass.add_argument("--issuer", default="memo-issuer")
    p_pass.add_argument("--consumer", default="memo-app")
    p_pass.add_argument("--audience", default="memo")
    args = ap.parse_args(argv)
    if args.command == "init":
        init(args.dir, args.algorithm)
    else:
        if not args.secret:
            ap.error("--secret (or $MEMO_TOKEN_SECRET) is required")
        passport(args.dir, args.token, args.secret, args.issuer, args.consumer, args.audience)


if __name__ == "__main__":
    main()

"""gwanmun.auth.jwks against a real HTTP server on 127.0.0.1: caching, refresh rules, failures, limits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gwanmun.auth.jwks import JWKSClient
from gwanmun.auth.jwt import JWTError, JWTVerifier


class Server:
    """A JWKS endpoint whose answers the test scripts: body, status, headers, delay, drip, redirect."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.headers: dict[str, str] = {"Cache-Control": "max-age=300"}
        self.content_length = True
        self.delay = 0.0  # seconds before answering
        self.drip = 0.0  # seconds between body bytes
        self.redirect: str | None = None  # Location for requests to /redirect
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with srv.lock:
                    srv.requests += 1
                if srv.delay:
                    srv.release.wait(srv.delay)
                if self.path == "/redirect" and srv.redirect:
                    self.send_response(302)
                    self.send_header("Location", srv.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = srv.body
                self.send_response(srv.status)
                for k, v in srv.headers.items():
                    self.send_header(k, v)
                if srv.content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if srv.drip:
                        for i in range(len(body)):
                            if srv.release.wait(srv.drip):
                                return
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"

    def serve(self, *jwks: dict, max_age: int | None = 300) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()
        self.headers = {} if max_age is None else {"Cache-Control": f"max-age={max_age}"}

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.release.set()
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pk():
    return {
        "r1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "r2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "e1": ec.generate_private_key(ec.SECP256R1()),
        "d1": ed25519.Ed25519PrivateKey.generate(),
    }


def jwk(private, kid: str | None = None, alg: str | None = None, **extra) -> dict:
    pub = private.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(pub, as_dict=True)
    if kid is not None:
        d["kid"] = kid
    if alg is not None:
        d["alg"] = alg
    return {**d, **extra}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def client(server: Server, clock: Clock | None = None, **kw) -> JWKSClient:
    kw.setdefault("timeout", 2.0)
    return JWKSClient(server.url, clock=clock or Clock(), proxies={}, **kw)


def run(coro):
    return asyncio.run(coro)


async def settle(c: JWKSClient, limit: float = 3.0) -> None:
    """Wait until no fetch is in flight (the background one a stale get_key started)."""
    end = time.monotonic() + limit
    while c._inflight is not None and time.monotonic() < end:
        await asyncio.sleep(0.005)


# --- caching ---------------------------------------------------------------------------------------------------

def test_fetch_once_and_cache(server, pk):
    server.serve(jwk(pk["r1"], "k1", "RS256", use="sig"), jwk(pk["e1"], "e1"), jwk(pk["d1"], "d1"))
    clock = Clock()
    c = client(server, clock)

    async def main():
        k1 = await c.get_key("k1", "RS256")
        assert (k1.kid, k1.algorithm) == ("k1", "RS256")
        assert (await c.get_key("e1")).algorithm == "ES256"  # alg from the curve
        assert (await c.get_key("d1")).algorithm == "EdDSA"
        clock.t += 299
        assert await c.get_key("k1") is k1
        assert server.requests == 1
        assert c.expires_at - c.fetched_at == 300
        await c.aclose()

    run(main())


@pytest.mark.parametrize("cache_control,age,ttl", [
    ("max-age=120", None, 120), ("public, max-age=120", "20", 100), ('max-age="120"', None, 120),
    ("max-age=5", None, 60), ("max-age=100", "500", 60), ("max-age=999999", None, 3600),
    ("no-store", None, 60), ("no-cache, max-age=500", None, 60), (None, None, 300), ("max-age=abc", None, 300),
    ("private", None, 300),
], ids=["max-age", "age", "quoted", "min", "age-past", "max", "no-store", "no-cache", "none", "junk", "other"])
def test_ttl_bounds(server, cache_control, age, ttl):
    c = client(server, min_ttl=60, max_ttl=3600, default_ttl=300)
    assert c._ttl(cache_control, age) == ttl


def test_ttl_through_http(server, pk):
    server.serve(jwk(pk["r1"], "k1"), max_age=5)
    c = client(server, min_ttl=30)

    async def main():
        assert await c.get_key("k1")
        assert c.expires_at - c.fetched_at == 30
        await c.aclose()

    run(main())


# --- refresh on an unknown kid, and its rate limit -------------------------------------------------------------

def test_unknown_kid_refreshes(server, pk):
    server.serve(jwk(pk["r1"], "k1"))
    clock = Clock()
    c = client(server, clock, refresh_interval=30)

    async def main():
        assert await c.get_key("k1")
        server.serve(jwk(pk["r1"], "k1"), jwk(pk["r2"], "k2"))  # the provider rotates in a key
        clock.t += 30
        k2 = await c.get_key("k2")
        assert k2 is not None and k2.kid == "k2"
        assert server.requests == 2
        await c.aclose()

    run(main())


def test_unknown_kid_refresh_is_rate_limited(server, pk):
    server.serve(jwk(pk["r1"], "k1"))
    clock = Clock()
    c = client(server, clock, refresh_interval=30)

    async def main():
        assert await c.get_key("k1")
        for kid in ("x1", "x2", "x3", "../../etc/passwd", "' OR 1=1"):
            assert await c.get_key(kid) is None
        assert server.requests == 1  # within 30 s of the last fetch: no new fetch
        clock.t += 29.9
        assert await c.get_key("x4") is None and server.requests == 1
        clock.t += 0.1
        results = await asyncio.gather(*(c.get_key(f"new{i}") for i in range(20)))
        assert results == [None] * 20
        assert server.requests == 2  # concurrent callers shared one fetch
        assert await c.get_key("x5") is None and server.requests == 2
        assert await c.get_key("k1") is not None  # known kids never wait
        assert await c.get_key("a" * 1000) is None and server.requests == 2  # invalid kids never fetch
        await c.aclose()

    run(main())


def test_first_fetch_failure_is_rate_limited(server, pk):
    server.status = 503
    clock = Clock()
    c = client(server, clock, refresh_interval=10)

    async def main():
        assert await c.get_key("k1") is None
        assert await c.get_key("k1") is None
        assert server.requests == 1 and c.last_error == "HTTP 503"
        server.status = 200
        server.serve(jwk(pk["r1"], "k1"))
        clock.t += 10
        assert await c.get_key("k1") is not None
        assert server.requests == 2 and c.last_error is None and c.failures == 0
        await c.aclose()

    run(main())


# --- failures keep the last good keys --------------------------------------------------------------------------

@pytest.mark.parametrize("failure,error", [
    ("down", "unreachable"), ("503", "HTTP 503"), ("json", "invalid JSON"), ("shape", "no 'keys' list"),
    ("unusable", "no usable keys"), ("empty", "no usable keys"),
])
def test_stale_keys_are_served_while_the_url_fails(server, pk, failure, error):
    server.serve(jwk(pk["r1"], "k1"), max_age=60)
    clock = Clock()
    c = client(server, clock, refresh_interval=1)

    async def main():
        k1 = await c.get_key("k1")
        assert k1 is not None
        if failure == "down":
            server.stop()
        elif failure == "503":
            server.status = 503
        elif failure == "json":
            server.body = b"{not json"
        elif failure == "shape":
            server.body = b'[{"kty": "RSA"}]'
        elif failure == "unusable":
            server.serve({"kty": "oct", "k": "c2VjcmV0", "kid": "k1"})
        else:
            server.serve()
        clock.t += 1000  # long expired
        assert await c.get_key("k1") is k1  # served stale at once; a refresh starts in the background
        await settle(c)
        assert c.fetches == 2 and c.failures == 1 and error in c.last_error
        assert await c.get_key("k1") is k1
        assert await c.get_key("k2") is None  # an unknown kid within refresh_interval of the last try: no fetch
        assert c.fetches == 2
        clock.t += 1
        assert await c.get_key("k2") is None
        assert c.fetches == 3 and c.failures == 2
        assert await c.get_key("k1") is k1
        await c.aclose()

    run(main())


def test_max_stale_bounds_stale_serving(server, pk):
    server.serve(jwk(pk["r1"], "k1"), max_age=60)
    clock = Clock()
    c = client(server, clock, max_stale=100)

    async def main():
        assert await c.get_key("k1")
        server.status = 500
        clock.t += 60 + 100
        assert await c.get_key("k1") is not None
        await settle(c)
        clock.t += 1
        assert await c.get_key("k1") is None
        await c.aclose()

    run(main())


# --- limits: size, time, URL ----------------------------------------------------------------------------------

@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "until-close"])
def test_oversize_response_is_refused(server, pk, content_length):
    server.serve(*(jwk(pk["r1"], f"k{i}") for i in range(5)))
    server.content_length = content_length
    c = client(server, max_bytes=1000)

    async def main():
        assert await c.get_key("k1") is None
        assert c.last_error == "response too large" and c.keys == ()
        await c.aclose()

    run(main())


@pytest.mark.parametrize("mode", ["slow-headers", "slow-body"])
def test_timeout(server, pk, mode):
    server.serve(jwk(pk["r1"], "k1"))
    if mode == "slow-headers":
        server.delay = 5.0
    else:
        server.drip = 0.02  # each byte arrives quickly: only a total deadline stops this
    c = client(server, timeout=0.3)

    async def main():
        start = time.monotonic()
        assert await c.get_key("k1") is None
        assert time.monotonic() - start < 1.5
        assert c.last_error == "timed out"
        await c.aclose()

    run(main())


def test_url_rules(server, pk):
    for url in ("file:///etc/passwd", "ftp://example.com/jwks", "http://", "/jwks", "data:,{}"):
        with pytest.raises(ValueError):
            JWKSClient(url)
    with pytest.raises(ValueError):
        JWKSClient(server.url, timeout=0)
    server.serve(jwk(pk["r1"], "k1"))
    redirect = server.url.replace("/jwks", "/redirect")

    async def main():
        server.redirect = server.url
        c = JWKSClient(redirect, proxies={}, timeout=2)
        assert await c.get_key("k1") is not None  # http -> http redirect is followed
        await c.aclose()
        server.redirect = "file:///etc/passwd"
        c = JWKSClient(redirect, proxies={}, timeout=2)
        assert await c.get_key("k1") is None
        assert "refused" in c.last_error
        await c.aclose()

    run(main())


def test_no_redirect_from_https_to_http():
    import urllib.request

    from gwanmun.auth.jwks import JWKSError, _Redirects

    handler = _Redirects()
    req = urllib.request.Request("https://idp.example/jwks")
    with pytest.raises(JWKSError):
        handler.redirect_request(req, None, 302, "Found", {}, "http://idp.example/jwks")
    req.add_header("Authorization", "Bearer private-jwks")
    same = handler.redirect_request(req, None, 302, "Found", {}, "https://idp.example/v2/jwks")
    assert same.get_header("Authorization") == "Bearer private-jwks"
    other = handler.redirect_request(req, None, 302, "Found", {}, "https://cdn.example/jwks")
    assert other is not None and other.get_header("Authorization") is None


# --- which keys are used ---------------------------------------------------------------------------------------

def test_unusable_keys_are_skipped(server, pk):
    private_jwk = json.loads(RSAAlgorithm.to_jwk(pk["r2"]))  # has "d": a private key must never be used
    server.serve(
        jwk(pk["r1"], "good"),
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "hmac", "alg": "HS256"},
        jwk(pk["r1"], "enc", use="enc"),
        jwk(pk["r1"], "ops", key_ops=["encrypt"]),
        jwk(pk["r1"], "x" * 300),
        jwk(pk["r1"], 17),
        {**private_jwk, "kid": "private"},
        jwk(pk["e1"], "mismatch", "RS256"),
        jwk(pk["e1"], "es512", "ES512"),
        {"kty": "RSA", "kid": "broken"},
        {"kty": "EC", "crv": "secp256k1", "kid": "k1"},
        "not an object",
    )
    c = client(server)

    async def main():
        assert await c.get_key("good") is not None
        assert [k.kid for k in c.keys] == ["good"]
        await c.aclose()

    run(main())


def test_kid_and_alg_selection(server, pk):
    server.serve(jwk(pk["r1"], "k1", "RS256"), jwk(pk["r1"], "k1", "PS256"), jwk(pk["e1"], alg="ES256"))
    c = client(server)

    async def main():
        assert (await c.get_key("k1", "PS256")).algorithm == "PS256"
        assert (await c.get_key("k1", "RS256")).algorithm == "RS256"
        assert (await c.get_key("k1", "ES256")).algorithm == "RS256"  # the verifier will say "Invalid algorithm"
        assert (await c.get_key(None, "ES256")).kid == ""
        assert await c.get_key(None, "RS256") is not None  # the only RS256 key in the set
        assert await c.get_key(None) is None  # ambiguous
        assert server.requests == 1
        await c.aclose()

    run(main())


# --- with the verifier -----------------------------------------------------------------------------------------

def test_verify_jwks_end_to_end(server, pk):
    server.serve(jwk(pk["r1"], "k1", "RS256"), jwk(pk["e1"], "e1", "ES256"))
    clock = Clock()
    c = client(server, clock, refresh_interval=30)
    v = JWTVerifier(issuers=["https://idp"], audiences=["api"], claims_to_verify=["exp"])
    good = {"iss": "https://idp", "aud": "api", "exp": time.time() + 60, "sub": "u1"}

    def sign(claims, key, alg, kid):
        return pyjwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    async def reject(token) -> str:
        with pytest.raises(JWTError) as e:
            await v.verify_jwks(token, c)
        return e.value.code

    async def main():
        assert (await v.verify_jwks(sign(good, pk["r1"], "RS256", "k1"), c)).claims["sub"] == "u1"
        assert (await v.verify_jwks(sign(good, pk["e1"], "ES256", "e1"), c)).key.kid == "e1"
        assert await reject(sign(good, pk["r2"], "RS256", "k1")) == "bad_signature"  # not the published key
        assert await reject(sign({**good, "iss": "https://evil"}, pk["r1"], "RS256", "k1")) == "bad_iss"
        assert await reject(sign(good, pk["r1"], "PS256", "k1")) == "bad_alg"
        public_pem = pk["r1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        def enc(b: bytes) -> str:  # the HS/RS confusion forgery, built by hand
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        si = enc(b'{"alg":"HS256","kid":"k1"}') + "." + enc(json.dumps(good).encode())
        forged = si + "." + enc(hmac.new(public_pem, si.encode(), hashlib.sha256).digest())
        assert await reject(forged) == "bad_alg"
        assert server.requests == 1
        # rotation: the provider replaces k1 with k2; a k2 token triggers one fetch (past the rate limit)
        server.serve(jwk(pk["r2"], "k2", "RS256"))
        clock.t += 30
        assert (await v.verify_jwks(sign(good, pk["r2"], "RS256", "k2"), c)).key.kid == "k2"
        assert await reject(sign(good, pk["r1"], "RS256", "k1")) == "unknown_key"
        assert server.requests == 2
        await c.aclose()

    run(main())


# --- background refresh and shutdown ---------------------------------------------------------------------------

def test_background_refresh(server, pk):
    server.serve(jwk(pk["r1"], "k1"), max_age=0)  # clamped up to min_ttl

    async def main():
        c = JWKSClient(server.url, proxies={}, timeout=2, min_ttl=0.1, refresh_ratio=0.5, retry_interval=0.02,
                       max_retry_interval=0.05)
        c.start()
        c.start()  # idempotent
        end = time.monotonic() + 3
        while server.requests < 3 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert server.requests >= 3 and c.failures == 0
        server.serve(jwk(pk["r2"], "k2"), max_age=0)  # picked up without any request asking for it
        n = server.requests
        while (server.requests < n + 2 or not c.keys or c.keys[0].kid != "k2") and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert [k.kid for k in c.keys] == ["k2"]
        server.status = 503  # failures are retried with backoff, keeping the keys
        n = server.requests
        while server.requests < n + 3 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert c.failures >= 2 and [k.kid for k in c.keys] == ["k2"]
        await c.aclose()
        assert c._task is None
        n = server.requests
        await asyncio.sleep(0.15)
        assert server.requests == n

    run(main())


def test_start_on_a_loop_that_is_not_running(server, pk):
    server.serve(jwk(pk["r1"], "k1"))
    loop = asyncio.new_event_loop()
    try:
        c = JWKSClient(server.url, proxies={}, timeout=2)
        c.start(loop)

        async def main():
            end = time.monotonic() + 3
            while not c.keys and time.monotonic() < end:
                await asyncio.sleep(0.01)
            assert await c.get_key("k1") is not None
            await c.aclose()

        loop.run_until_complete(main())
    finally:
        loop.close()


def test_aclose_stops_a_fetch_in_flight(server, pk):
    server.serve(jwk(pk["r1"], "k1"))
    server.delay = 5.0
    c = client(server, timeout=0.5)

    async def main():
        waiting = asyncio.create_task(c.get_key("k1"))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await c.aclose()
        assert await waiting is None  # the caller is answered, not cancelled
        assert time.monotonic() - start < 0.3
        n = server.requests
        assert await c.get_key("k1") is None and server.requests == n

    run(main())


def test_an_unexpected_error_in_a_fetch_is_a_failed_fetch(server, pk):
    server.serve(jwk(pk["r1"], "k1"))
    c = client(server)

    def boom(body):
        raise RuntimeError("bug")

    c._parse = boom

    async def main():
        assert await c.get_key("k1") is None
        assert c.last_error == "RuntimeError" and c.failures == 1
        await c.aclose()

    run(main())

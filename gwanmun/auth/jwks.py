"""A JWKS client: an identity provider's signing keys, fetched over HTTP(S), cached, refreshed off the hot path.

- A fetch runs urllib in a thread (``asyncio.to_thread``) with a total ``timeout`` and reads at most ``max_bytes``.
  Only http and https URLs; at most 3 redirects, never from https to http. TLS certificates are verified (pass
  ``ssl_context`` for a private CA).
- The set is kept for the response's ``Cache-Control: max-age`` (minus ``Age``), bounded to [``min_ttl``,
  ``max_ttl``]; ``default_ttl`` without one, ``min_ttl`` with no-store or no-cache.
- ``start()`` runs a background task: it fetches at once, then again at ``refresh_ratio`` of the TTL (less up to
  10% jitter, so workers spread out), and retries a failed fetch after ``retry_interval``, doubling up to
  ``max_retry_interval``.
- ``get_key`` with a kid that is not in the set fetches at once, but on-demand fetches happen at most once every
  ``refresh_interval`` seconds and concurrent callers share one fetch, so tokens with made-up kids cannot turn the
  gateway into a load generator against the identity provider.
- A failed fetch (network, status, size, timeout, JSON, no usable key) keeps the last good set serving, for at most
  ``max_stale`` seconds past its expiry (None: until a fetch succeeds).
- A key is used when PyJWT's ``PyJWK`` loads it, its ``use`` is absent or "sig" (and ``key_ops``, if any, has
  "verify"), its ``kid`` (if any) is a ``valid_id``, and it is a public key for an algorithm in ``jwt.ALGORITHMS``.
  Symmetric ("oct") keys are skipped: a published set must never hold secrets, and using one would let anyone who
  can read the set forge tokens.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from gwanmun.auth.jwt import JWTError, JWTKey, valid_id

log = logging.getLogger("gwanmun.jwks")

MAX_KEYS: Final = 100  # keys read from one set; more are ignored
_READ: Final = 65536


class JWKSError(Exception):
    """A fetch failed. The message is short and safe to log (no response body, no credentials)."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 3

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if new not in ("http", "https") or (old == "https" and new != "https"):
            if fp is not None:
                fp.close()
            raise JWKSError(f"redirect to {new or 'a relative'} URL refused")
        out = super().redirect_request(req, fp, code, msg, headers, newurl)
        if out is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            for name in ("Authorization", "Cookie"):  # credentials go to the configured host only
                out.remove_header(name)
        return out


def _opener(ssl_context: ssl.SSLContext | None, proxies: Mapping[str, str] | None) -> urllib.request.OpenerDirector:
    # Only HTTP(S): build_opener would also add file:, ftp: and data: handlers.
    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(None if proxies is None else dict(proxies)),
              urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(context=ssl_context),
              urllib.request.HTTPDefaultErrorHandler(), _Redirects(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    return opener


def _usable(jwk: object) -> JWTKey | None:
    if not isinstance(jwk, dict) or jwk.get("kty") == "oct":
        return None
    use, ops = jwk.get("use"), jwk.get("key_ops")
    if (use is not None and use != "sig") or (ops is not None and (not isinstance(ops, list) or "verify" not in ops)):
        return None
    if "kid" in jwk and not valid_id(jwk["kid"]):
        return None
    try:
        return JWTKey.from_jwk(PyJWK(jwk))
    except (JWTError, PyJWTError, ValueError, TypeError, KeyError):
        return None


class JWKSClient:
    """The keys of one JWKS URL, for ``JWTVerifier.verify_jwks``. One per URL per worker; see the module docstring.

    ``clock`` (monotonic seconds) is for tests; the background task sleeps in real time.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, max_bytes: int = 256 * 1024, min_ttl: float = 60.0,
                 max_ttl: float = 86400.0, default_ttl: float = 300.0, refresh_ratio: float = 0.8,
                 refresh_interval: float = 30.0, retry_interval: float = 5.0, max_retry_interval: float = 300.0,
                 max_stale: float | None = None, headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, proxies: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("JWKS URL must be an absolute http or https URL")
        if not (timeout > 0 and max_bytes > 0 and 0 <= min_ttl <= max_ttl and 0 < refresh_ratio <= 1
                and refresh_interval >= 0 and 0 < retry_interval <= max_retry_interval
                and (max_stale is None or max_stale >= 0)):
            raise ValueError("JWKS client: invalid timing or size bounds")
        self.url = url
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.default_ttl = default_ttl
        self.refresh_ratio = refresh_ratio
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.max_stale = max_stale
        self._clock = clock
        self._headers = {"Accept": "application/json", "User-Agent": "gwanmun-jwks", **(headers or {})}
        self._opener = _opener(ssl_context, proxies)
        self._where = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        # state
        self._by_kid: dict[str, tuple[JWTKey, ...]] = {}
        self._all: tuple[JWTKey, ...] = ()
        self.fetched_at: float | None = None  # clock time of the last good fetch
        self.expires_at = 0.0
        self._next_refresh = 0.0
        self._last_attempt = float("-inf")
        self.fetches = 0  # attempts, for metrics and tests
        self.failures = 0  # consecutive
        self.last_error: str | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def keys(self) -> tuple[JWTKey, ...]:
        return self._all

    async def get_key(self, kid: str | None, alg: str | None = None) -> JWTKey | None:
        """The key for a token's ``kid`` (and ``alg``), or None.

        With a kid: the key with that kid, preferring one for ``alg`` (a key of another algorithm is still returned,
        so the verifier reports "Invalid algorithm" rather than fetching again). Without a kid: the only key for
        ``alg`` in the set, if exactly one. Fetches when nothing is loaded yet or the kid is unknown, subject to
        ``refresh_interval``.
        """
        if kid is not None and not valid_id(kid):
            return None
        now = self._clock()
        if self.fetched_at is None:
            if self._may_fetch(now):
                await self.refresh()
            return self._find(kid, alg, self._clock())
        if now >= self.expires_at and self._task is None and self._inflight is None and self._may_fetch(now):
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())  # stale: refresh, don't wait
        key = self._find(kid, alg, now)
        if key is None and self._may_fetch(now):
            await self.refresh()
            key = self._find(kid, alg, self._clock())
        return key

    def _may_fetch(self, now: float) -> bool:
        return not self._closed and (self._inflight is not None or now - self._last_attempt >= self.refresh_interval)

    def _find(self, kid: str | None, alg: str | None, now: float) -> JWTKey | None:
        if self.max_stale is not None and now > self.expires_at + self.max_stale:
            return None
        if kid is None:
            found = [k for k in self._all if alg is None or k.algorithm == alg]
            return found[0] if len(found) == 1 else None
        keys = self._by_kid.get(kid)
        if not keys:
            return None
        for k in keys:
            if k.algorithm == alg:
                return k
        return keys[0]

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch in flight. True if a new set was loaded. Ignores ``refresh_interval``."""
        if self._closed:
            return False
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        try:
            return await asyncio.shield(task)  # a caller that is cancelled does not cancel the shared fetch
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                return False  # aclose() cancelled the fetch, not us
            raise

    async def _fetch(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            try:
                body, cache_control, age = await asyncio.wait_for(asyncio.to_thread(self._get), self.timeout)
            except TimeoutError:
                raise JWKSError("timed out") from None
            by_kid, keys = self._parse(body)
        except Exception as e:  # noqa: BLE001 - a fetch never fails a request: it keeps the last good set
            if not isinstance(e, JWKSError):
                log.exception("JWKS fetch from %s", self._where)
            now = self._clock()
            self.failures += 1
            self.last_error = str(e) if isinstance(e, JWKSError) else type(e).__name__
            delay = min(self.retry_interval * 2 ** min(self.failures - 1, 16), self.max_retry_interval)
            self._next_refresh = now + delay
            log.warning("JWKS fetch from %s failed: %s; serving %d cached keys", self._where, self.last_error,
                        len(self._all))
            return False
        finally:
            self._inflight = None
        now = self._clock()
        ttl = self._ttl(cache_control, age)
        self._by_kid, self._all = by_kid, keys
        self.fetched_at = now
        self.expires_at = now + ttl
        self._next_refresh = now + ttl * self.refresh_ratio * random.uniform(0.9, 1.0)
        self.failures = 0
        self.last_error = None
        log.debug("JWKS from %s: %d keys for %.0f s", self._where, len(keys), ttl)
        return True

    def _get(self) -> tuple[bytes, str | None, str | None]:
        """In a thread: GET the set, with a total deadline and a size bound."""
        deadline = time.monotonic() + self.timeout
        req = urllib.request.Request(self.url, headers=self._headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise JWKSError(f"HTTP {resp.status}")
                length = resp.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise JWKSError("response too large")
                buf = bytearray()
                while True:
                    if time.monotonic() > deadline:
                        raise JWKSError("timed out")
                    chunk = resp.read1(min(_READ, self.max_bytes + 1 - len(buf)))
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > self.max_bytes:
                        raise JWKSError("response too large")
                return bytes(buf), resp.headers.get("Cache-Control"), resp.headers.get("Age")
        except urllib.error.HTTPError as e:
            e.close()  # a 3xx here is a redirect urllib or _Redirects refused (scheme, or more than 3)
            raise JWKSError(f"redirect refused (HTTP {e.code})" if 300 <= e.code < 400 else f"HTTP {e.code}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise JWKSError("timed out") from None
            raise JWKSError(f"unreachable ({reason})"[:200]) from None
        except TimeoutError:
            raise JWKSError("timed out") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise JWKSError(f"{type(e).__name__}") from None

    def _parse(self, body: bytes) -> tuple[dict[str, tuple[JWTKey, ...]], tuple[JWTKey, ...]]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JWKSError("invalid JSON") from None
        jwks = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(jwks, list):
            raise JWKSError("no 'keys' list")
        keys = tuple(k for k in map(_usable, jwks[:MAX_KEYS]) if k is not None)
        if not keys:
            raise JWKSError("no usable keys")  # an empty set would lock everyone out; keep the last good one
        by_kid: dict[str, list[JWTKey]] = {}
        for k in keys:
            if k.kid:
                by_kid.setdefault(k.kid, []).append(k)
        return {kid: tuple(ks) for kid, ks in by_kid.items()}, keys

    def _ttl(self, cache_control: str | None, age: str | None) -> float:
        max_age: int | None = None
        for d in (cache_control or "").lower().split(","):
            d = d.strip()
            if d in ("no-store", "no-cache"):
                return self.min_ttl
            if d.startswith("max-age="):
                v = d[8:].strip('"')
                if v.isdigit():
                    max_age = int(v)
        if max_age is None:
            ttl = self.default_ttl
        else:
            ttl = max_age - (int(age) if age and age.strip().isdigit() else 0)
        return float(min(max(ttl, self.min_ttl), self.max_ttl))

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Run the background refresher on ``loop`` (default: the running loop). It fetches at once."""
        if self._task is None and not self._closed:
            self._task = (loop or asyncio.get_running_loop()).create_task(self._run())

    async def _run(self) -> None:
        while not self._closed:
            now = self._clock()
            if now >= self._next_refresh:
                try:
                    await self.refresh()
                except Exception:  # noqa: BLE001 - the refresher must outlive any bug in one fetch
                    log.exception("JWKS refresh from %s", self._where)
                    self._next_refresh = self._clock() + self.retry_interval
                continue
            await asyncio.sleep(self._next_refresh - now)

    async def aclose(self) -> None:
        """Stop the refresher and any fetch in flight (its thread ends within ``timeout``)."""
        self._closed = True
        tasks = [t for t in (self._task, self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._inflight = None

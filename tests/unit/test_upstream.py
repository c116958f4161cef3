"""Balancer, DNS cache, pool bookkeeping and the proxy's small pure helpers."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from gwanmun.http.wire import chunk, connection_tokens, no_body_status, status_line
from gwanmun.http.normalize import split_target
from gwanmun.proxy import _drop_named, _real_ip, strip_port
from gwanmun.runtime import Settings
from gwanmun.upstream.balancer import RoundRobin, Target
from gwanmun.upstream.dns import Resolver, ResolveError, read_hosts
from gwanmun.upstream.pool import Pool, PoolSettings


def _rr(*weights: int) -> RoundRobin:
    return RoundRobin(tuple(Target(f"10.0.0.{i}", 80, w) for i, w in enumerate(weights)))


@pytest.mark.parametrize(
    "weights,expected",
    [
        ((5, 1, 1), "a a b a c a a"),  # nginx's documented smooth sequence
        ((1, 1), "a b"),
        ((2, 1), "a b a"),
    ],
    ids=["5-1-1", "equal", "2-1"],
)
def test_smooth_round_robin_sequence(weights, expected):
    rr = _rr(*weights)
    names = "abc"
    got = " ".join(names[int(rr.pick().host.rsplit(".", 1)[1])] for _ in range(sum(weights)))
    assert got == expected


def test_round_robin_shares_follow_weights_and_skip_zero():
    rr = _rr(30, 10, 0)
    counts = Counter(rr.pick().host for _ in range(4000))
    assert counts == {"10.0.0.0": 3000, "10.0.0.1": 1000}


def test_round_robin_all_zero_gives_none():
    assert _rr(0, 0).pick() is None
    assert _rr(0).pick() is None


def test_target_label_brackets_ipv6():
    assert Target("::1", 8080).label == "[::1]:8080"
    assert Target("example.com", 80).label == "example.com:80"


@pytest.mark.parametrize(
    "code,line",
    [(200, b"HTTP/1.1 200 OK\r\n"), (404, b"HTTP/1.1 404 Not Found\r\n"), (599, b"HTTP/1.1 599 \r\n")],
    ids=["200", "404", "unknown"],
)
def test_status_line(code, line):
    assert status_line(code) == line


@pytest.mark.parametrize("code,none", [(100, True), (204, True), (304, True), (200, False), (404, False)])
def test_no_body_status(code, none):
    assert no_body_status(code) is none


def test_chunk_and_connection_tokens():
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert connection_tokens(b"Keep-Alive, X-Foo ,,close") == {b"keep-alive", b"x-foo", b"close"}


def test_drop_named_removes_only_listed_fields():
    parts = [b"A", b": ", b"1", b"\r\n", b"X-Foo", b": ", b"2", b"\r\n", b"B", b": ", b"3", b"\r\n"]
    assert b"".join(_drop_named(parts, {b"x-foo"})) == b"A: 1\r\nB: 3\r\n"


@pytest.mark.parametrize(
    "url,expected",
    [
        (b"http://example.com/a/b?x=1", (b"/a/b", b"?x=1", b"example.com")),
        (b"http://example.com:8080", (b"/", b"", b"example.com:8080")),
        (b"HTTP://Example.com/p", (b"/p", b"", b"example.com")),  # the authority is lower-cased
        (b"*", (b"*", b"", b"")),
    ],
    ids=["path-query", "no-path", "upper-scheme", "asterisk"],
)
def test_absolute_form(url, expected):
    path, query, authority = expected
    assert split_target(url) == (path.decode(), path, query, authority)


@pytest.mark.parametrize("url", [b"ftp://x/y", b"example.com:443", b"http:///nohost"], ids=["ftp", "authority", "nohost"])
def test_absolute_form_rejects(url):
    assert split_target(url) is None


@pytest.mark.parametrize(
    "host,stripped",
    [(b"a.com:80", b"a.com"), (b"a.com", b"a.com"), (b"[::1]:8080", b"[::1]"), (b"[::1]", b"[::1]")],
)
def test_strip_port(host, stripped):
    assert strip_port(host) == stripped


def test_real_ip_is_rightmost_untrusted_hop():
    import ipaddress

    s = Settings(trusted=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")))
    assert _real_ip(b"1.2.3.4, 10.0.0.5", "127.0.0.1", s) == "1.2.3.4"
    # a spoofed left-most entry is ignored: the right-most untrusted hop is the real client
    assert _real_ip(b"6.6.6.6, 5.5.5.5, 10.1.1.1", "127.0.0.1", s) == "5.5.5.5"
    assert _real_ip(b"10.0.0.1, 10.0.0.2", "127.0.0.1", s) == "10.0.0.1"
    assert s.is_trusted("10.9.9.9") and not s.is_trusted("11.0.0.1") and not s.is_trusted("garbage")


def test_hosts_file_and_ip_resolution(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost api.internal\n# comment\n::1 localhost ip6-localhost\nbad line\n")
    assert read_hosts(str(hosts)) == {
        "localhost": ("127.0.0.1", "::1"),
        "api.internal": ("127.0.0.1",),
        "ip6-localhost": ("::1",),
    }
    r = Resolver(hostsfile=str(hosts))
    assert r.cached("api.internal") == "127.0.0.1"
    assert asyncio.run(r.resolve("localhost")) == "127.0.0.1"


def test_unknown_name_is_a_resolve_error_and_cached_negative(tmp_path):
    # A nameserver on a closed local port: the lookup fails fast and the failure is cached for error_ttl.
    r = Resolver(hostsfile="", nameservers=["127.0.0.1"], timeout=0.3, error_ttl=30)
    with pytest.raises(ResolveError):
        asyncio.run(r.resolve("no-such-host.invalid"))
    with pytest.raises(ResolveError):
        asyncio.run(r.resolve("no-such-host.invalid"))  # served from the negative cache, no second wait


def _conn(pool, alive=True):
    """A real UpstreamConnection without a socket (the pool only looks at its flags)."""
    from gwanmun.upstream.connection import UpstreamConnection

    conn = UpstreamConnection(pool)
    conn.closed = not alive
    return conn


def test_pool_lifo_caps_and_sweeps():
    pool = Pool(("h", 1), PoolSettings(max_idle=2, max_requests=3, idle_timeout=10))
    a, b, c = _conn(pool), _conn(pool), _conn(pool)
    for conn in (a, b, c):
        pool.active += 1
        pool.release(conn, now=100.0)
    assert pool.idle == [a, b] and c.closed  # cap of 2 idle connections
    assert pool.acquire() is b  # warmest first
    b.requests = 3
    pool.release(b, now=105.0)
    assert b.closed  # max_requests reached
    a.idle_since = 90.0
    pool.sweep(now=101.0)
    assert a.closed and pool.idle == []


def test_pool_skips_dead_idle_connections():
    pool = Pool(("h", 1), PoolSettings())
    live = _conn(pool)
    dead = _conn(pool, alive=False)
    pool.idle = [live, dead]
    assert pool.acquire() is live
    assert pool.idle == []


@pytest.mark.parametrize(
    "spec,expected",
    [("10.0.0.53", ("10.0.0.53", None)), ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("[::1]:53", ("::1", 53)),
     ("::1", ("::1", None))],
    ids=["ip", "ip-port", "v6-port", "v6"],
)
def test_nameserver_spec(spec, expected):
    from gwanmun.upstream.dns import _split_nameserver

    assert _split_nameserver(spec) == expected


def test_pool_zero_settings_follow_kong():
    """upstream_keepalive_max_requests 0 = no limit; upstream_keepalive_idle_timeout 0 = never close idle."""
    pool = Pool(("h", 1), PoolSettings(max_idle=4, max_requests=0, idle_timeout=0))
    conn = _conn(pool)
    conn.requests = 10**6
    pool.active += 1
    pool.release(conn, now=1.0)
    assert pool.idle == [conn] and not conn.closed
    pool.sweep(now=10**9)
    assert pool.idle == [conn] and not conn.closed


@pytest.mark.parametrize(
    "listen,expected",
    [("0.0.0.0:8000", ("0.0.0.0", 8000)), (":8000", ("0.0.0.0", 8000)), ("*:8000", ("0.0.0.0", 8000)),
     ("[::]:8443", ("::", 8443)), ("127.0.0.1:0", ("127.0.0.1", 0))],
    ids=["any", "bare-port", "star", "v6", "port-0"],
)
def test_split_listen(listen, expected):
    from gwanmun.server import split_listen

    assert split_listen(listen) == expected

"""Balancers (round-robin, least-connections, latency, consistent-hashing), the hash key of a request, and the
upstream config that selects them (issue 4, item 1)."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwanmun.config import load_text
from gwanmun.config.compile import compile_runtime
from gwanmun.errors import ConfigError
from gwanmun.upstream.balancer import (
    Balancer,
    ConsistentHashing,
    LeastConnections,
    Latency,
    RoundRobin,
    Target,
)
from gwanmun.upstream.hashing import HashSpec, hash_key, parse_cookie


def targets(*weights: int) -> tuple[Target, ...]:
    return tuple(Target(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights))


def counts(b: Balancer, n: int, key=None) -> Counter:
    c: Counter = Counter()
    for i in range(n):
        t = b.pick(key(i) if callable(key) else key)
        c[t.label if t is not None else None] += 1
    return c


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------------------------
# The common interface
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    RoundRobin, LeastConnections, Latency, lambda ts: ConsistentHashing(ts, slots=1000),
], ids=["round-robin", "least-connections", "latency", "consistent-hashing"])
def test_interface_and_weight_zero(make) -> None:
    ts = targets(100, 0, 100)
    b = make(ts)
    assert isinstance(b, Balancer)
    seen = set()
    for i in range(300):
        t = b.pick(str(i).encode())
        assert t is not None
        b.started(t)
        b.finished(t, 0.01)
        seen.add(t.label)
    assert seen == {"10.0.0.1:80", "10.0.0.3:80"}  # weight 0 gets nothing
    assert make(targets(0, 0)).pick(b"k") is None
    assert make(()).pick(None) is None


@pytest.mark.parametrize("make, held", [
    (RoundRobin, False), (lambda ts: ConsistentHashing(ts, slots=10000), False),
    (LeastConnections, True), (lambda ts: Latency(ts, clock=Clock()), True),
], ids=["round-robin", "consistent-hashing", "least-connections", "latency"])
def test_distribution_by_weight(make, held: bool) -> None:
    """Requests in flight (held) for the balancers that count them: they keep in-flight counts by weight."""
    b = make(targets(300, 100, 100))
    n = 5000
    c = Counter()
    for i in range(n):
        t = b.pick(f"key-{i}".encode())
        b.started(t)
        if not held:
            b.finished(t, 0.01)
        c[t.label] += 1
    assert c["10.0.0.1:80"] / n == pytest.approx(0.6, abs=0.05)
    assert c["10.0.0.2:80"] / n == pytest.approx(0.2, abs=0.05)
    assert c["10.0.0.3:80"] / n == pytest.approx(0.2, abs=0.05)


def test_unhealthy_targets_are_skipped_by_every_balancer() -> None:
    for make in (RoundRobin, LeastConnections, Latency, lambda ts: ConsistentHashing(ts, slots=100)):
        ts = targets(100, 100, 100)
        ts[1].healthy = False
        b = make(ts)
        assert {b.pick(str(i).encode()).label for i in range(200)} == {"10.0.0.1:80", "10.0.0.3:80"}
        for t in ts:
            t.healthy = False
        assert b.pick(b"x") is None


# ---------------------------------------------------------------------------------------------------------------
# least-connections
# ---------------------------------------------------------------------------------------------------------------


def test_least_connections_picks_the_least_loaded() -> None:
    a, b_, c = ts = targets(100, 100, 100)
    lc = LeastConnections(ts)
    for t, n in ((a, 3), (b_, 1), (c, 2)):
        for _ in range(n):
            lc.started(t)
    assert lc.pick() is b_
    lc.started(b_)
    lc.started(b_)  # b: 3, c: 2
    assert lc.pick() is c
    for _ in range(3):
        lc.finished(a, 0.1)  # a: 0
    assert lc.pick() is a


def test_least_connections_counts_per_weight_and_rotates_ties() -> None:
    heavy, light = ts = targets(200, 100)
    lc = LeastConnections(ts)
    for _ in range(2):
        lc.started(heavy)
    lc.started(light)  # (2+1)/200 < (1+1)/100
    assert lc.pick() is heavy
    eq = LeastConnections(targets(100, 100, 100))
    assert [eq.pick().label for _ in range(6)] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] * 2
    lc.finished(light, 0.0)
    lc.finished(light, 0.0)  # never below zero
    assert lc.active[1] == 0


def test_least_connections_spreads_concurrent_requests() -> None:
    ts = targets(100, 100, 100, 100)
    lc = LeastConnections(ts)
    held = []
    for _ in range(40):
        t = lc.pick()
        lc.started(t)
        held.append(t)
    assert lc.active == [10, 10, 10, 10]


# ---------------------------------------------------------------------------------------------------------------
# latency (EWMA)
# ---------------------------------------------------------------------------------------------------------------


def test_latency_prefers_the_faster_target_and_recovers() -> None:
    clock = Clock()
    fast, slow = ts = targets(100, 100)
    lat = Latency(ts, clock=clock)
    rtt = {fast.label: 0.010, slow.label: 0.500}

    def run(n: int, step: float = 0.001) -> Counter:
        c: Counter = Counter()
        for _ in range(n):
            t = lat.pick()
            lat.started(t)
            clock.now += step
            lat.finished(t, rtt[t.label])
            c[t.label] += 1
        return c

    c = run(1000)
    assert c[fast.label] > 0.95 * 1000  # both measured once, then the fast one takes the traffic
    assert c[slow.label] >= 1
    # the slow target becomes fast: unused, its average decays (DECAY_TIME 10 s) while the fast one's is refreshed,
    # so it is tried again (after about 10 * ln(0.5 / 0.01) = 39 s), measured fast, and wins its share back
    rtt[slow.label] = 0.010
    c = run(2000, step=0.05)  # 100 s of traffic
    assert c[slow.label] >= 3
    c = run(1000, step=0.05)
    assert c[slow.label] > 0.3 * 1000, c


def test_latency_spreads_a_burst_before_any_answer() -> None:
    lat = Latency(targets(100, 100, 100), clock=Clock())
    for _ in range(30):
        lat.started(lat.pick())
    assert lat.active == [10, 10, 10]


def test_latency_ewma_is_kongs_time_decayed_average() -> None:
    clock = Clock()
    (t,) = ts = targets(100)
    lat = Latency(ts, clock=clock)
    lat.started(t)
    lat.finished(t, 0.2)
    assert lat.ewma[0] == pytest.approx(0.2)  # first sample taken as is
    clock.now += 10.0  # one DECAY_TIME: weight e^-1
    lat.started(t)
    lat.finished(t, 1.0)
    assert lat.ewma[0] == pytest.approx(0.2 * 0.36787944 + 1.0 * (1 - 0.36787944))


# ---------------------------------------------------------------------------------------------------------------
# consistent-hashing
# ---------------------------------------------------------------------------------------------------------------


def owners(b: ConsistentHashing, keys: list[bytes]) -> list[str]:
    return [b.pick(k).label for k in keys]


KEYS = [f"client-{i}".encode() for i in range(10_000)]


def test_ring_same_key_same_target_and_stable_across_builds() -> None:
    ts = targets(100, 100, 100, 100, 100)
    one, two = ConsistentHashing(ts), ConsistentHashing(targets(100, 100, 100, 100, 100))
    assert owners(one, KEYS[:500]) == owners(one, KEYS[:500]) == owners(two, KEYS[:500])


@pytest.mark.parametrize("n", [5, 10])
def test_ring_adding_a_target_moves_about_one_nth_of_the_keys(n: int) -> None:
    before = ConsistentHashing(targets(*[100] * n))
    after = ConsistentHashing(targets(*[100] * (n + 1)))
    old, new = owners(before, KEYS), owners(after, KEYS)
    moved = sum(a != b for a, b in zip(old, new)) / len(KEYS)
    assert moved <= 1 / n + 0.02, moved
    assert moved >= 1 / (n + 1) - 0.03  # the new target does get its share
    assert all(b == "10.0.0.%d:80" % (n + 1) for a, b in zip(old, new) if a != b)  # only to the new target


def test_ring_removing_a_target_moves_only_its_keys() -> None:
    ts = targets(100, 100, 100, 100, 100, 100)
    before = ConsistentHashing(ts)
    after = ConsistentHashing(ts[:2] + ts[3:])  # 10.0.0.3 removed
    old, new = owners(before, KEYS), owners(after, KEYS)
    moved = [a for a, b in zip(old, new) if a != b]
    assert len(moved) / len(KEYS) <= 1 / 6 + 0.02
    assert set(moved) == {"10.0.0.3:80"}


def test_ring_weight_change_and_unhealthy_owner() -> None:
    ts = targets(100, 100, 100)
    ring = ConsistentHashing(ts, slots=1000)
    keys = KEYS[:2000]
    old = owners(ring, keys)
    ts[0].healthy = False
    moved = owners(ring, keys)
    assert all(b == a for a, b in zip(old, moved) if a != "10.0.0.1:80")  # others keep their keys
    assert "10.0.0.1:80" not in moved
    ts[0].healthy = True
    assert owners(ring, keys) == old  # and they come back


def test_ring_without_key_walks_by_weight_and_slots_bound_the_ring() -> None:
    ring = ConsistentHashing(targets(100, 300), slots=10)
    assert len(ring.ring) == 10
    c = counts(ConsistentHashing(targets(100, 300), slots=4000), 4000)
    assert c["10.0.0.2:80"] / 4000 == pytest.approx(0.75, abs=0.05)


# ---------------------------------------------------------------------------------------------------------------
# hash_key
# ---------------------------------------------------------------------------------------------------------------

HEADERS = [(b"Host", b"x"), (b"X-User", b"alice"), (b"x-user", b"bob"), (b"Cookie", b"a=1; sid=abc ; b=2")]


@pytest.mark.parametrize("spec, expected", [
    (HashSpec(), None),
    (HashSpec(on="ip"), b"192.0.2.7"),
    (HashSpec(on="consumer"), b"c-42"),
    (HashSpec(on="header", on_header="X-USER"), b"alice, bob"),
    (HashSpec(on="cookie", cookie="sid"), b"abc"),
    (HashSpec(on="path"), b"/users/7"),
    (HashSpec(on="query_arg", on_query_arg="tenant"), b"a b,z"),
    (HashSpec(on="query_arg", on_query_arg="flag"), b""),
    (HashSpec(on="uri_capture", on_uri_capture="id"), b"7"),
], ids=["none", "ip", "consumer", "header", "cookie", "path", "query_arg", "query_arg flag", "uri_capture"])
def test_hash_on_kinds(spec: HashSpec, expected) -> None:
    got = hash_key(spec, client_ip="192.0.2.7", headers=HEADERS, path=b"/users/7",
                   query=b"tenant=z&flag&tenant=a+b", consumer_id="c-42", captures={"id": "7"})
    assert got.key == expected
    assert got.set_cookie is None


def test_hash_fallbacks() -> None:
    kw = dict(client_ip="192.0.2.7", headers=[(b"Host", b"x")], path=b"/p", query=b"")
    assert hash_key(HashSpec(on="header", on_header="X-User", fallback="ip"), **kw).key == b"192.0.2.7"
    assert hash_key(HashSpec(on="consumer", fallback="path"), **kw).key == b"/p"
    assert hash_key(HashSpec(on="header", on_header="A", fallback="header", fallback_header="Host"), **kw).key == b"x"
    assert hash_key(HashSpec(on="query_arg", on_query_arg="a", fallback="query_arg", fallback_query_arg="b"),
                    **{**kw, "query": b"b=2"}).key == b"2"
    assert hash_key(HashSpec(on="uri_capture", on_uri_capture="x", fallback="none"), **kw).key is None
    assert hash_key(HashSpec(on="header", on_header="X-User", fallback="query_arg", fallback_query_arg="q"),
                    **kw).key is None  # both missing: no key
    assert hash_key(HashSpec(on="header", on_header="X-User"), **{**kw, "headers": [(b"X-User", b"")]}).key == b""


def test_cookie_is_set_when_absent_and_then_sticks() -> None:
    spec = HashSpec(on="cookie", cookie="gw", cookie_path="/app")
    first = hash_key(spec, headers=[(b"Host", b"x")], new_cookie_value=lambda: "u-1")
    assert first == (b"u-1", b"gw=u-1; Path=/app")
    again = hash_key(spec, cookie_header=b"other=1; gw=u-1")
    assert again == (b"u-1", None)
    # as a fallback (Kong allows hash_fallback: cookie, with hash_on_cookie)
    fb = HashSpec(on="header", on_header="X-User", fallback="cookie", cookie="gw")
    assert hash_key(fb, headers=[(b"X-User", b"u")]).key == b"u"
    got = hash_key(fb, headers=[], new_cookie_value=lambda: "u-2")
    assert got.set_cookie == b"gw=u-2; Path=/"
    assert parse_cookie(b"a=1;b=2", "c") is None


def test_hash_key_drives_the_ring() -> None:
    ring = ConsistentHashing(targets(100, 100, 100), HashSpec(on="ip"))
    picks = {ring.pick(hash_key(ring.hashing, client_ip="198.51.100.9").key).label for _ in range(20)}
    assert len(picks) == 1


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------

SERVICES = """
services:
- name: s
  host: u
  routes: [{name: r, paths: [/]}]
- name: plain
  host: example.com
  routes: [{name: p, paths: [/p]}]
"""


def runtime(upstream: str):
    text = '_format_version: "3.0"\n' + textwrap.dedent(upstream).lstrip("\n") + SERVICES
    return compile_runtime(load_text(text, filename="kong.yml", env={}))


@pytest.mark.parametrize("algorithm, cls", [
    ("round-robin", RoundRobin), ("least-connections", LeastConnections), ("latency", Latency),
    ("consistent-hashing", ConsistentHashing),
])
def test_compile_builds_the_balancer_of_the_algorithm(algorithm: str, cls) -> None:
    rt = runtime(f"""
        upstreams:
        - name: u
          algorithm: {algorithm}
          targets: [{{target: "10.0.0.1:80"}}, {{target: "10.0.0.2:80", weight: 0}}]
    """)
    svc, plain = rt.services
    assert type(svc.balancer) is cls
    assert type(plain.balancer) is RoundRobin and len(plain.balancer.targets) == 1
    assert svc.balancer.hashing is None


def test_compile_consistent_hashing_settings() -> None:
    rt = runtime("""
        upstreams:
        - name: u
          algorithm: consistent-hashing
          slots: 100
          hash_on: cookie
          hash_on_cookie: gw
          hash_on_cookie_path: /app
          targets: [{target: "10.0.0.1:80"}]
    """)
    b = rt.services[0].balancer
    assert isinstance(b, ConsistentHashing) and len(b.ring) == 100
    assert b.hashing == HashSpec(on="cookie", cookie="gw", cookie_path="/app")
    rt = runtime("""
        upstreams:
        - name: u
          algorithm: consistent-hashing
          hash_on: header
          hash_on_header: X-User
          hash_fallback: query_arg
          hash_fallback_query_arg: user
          targets: [{target: "10.0.0.1:80"}]
    """)
    assert rt.services[0].balancer.hashing == HashSpec(on="header", on_header="X-User", fallback="query_arg",
                                                       fallback_query_arg="user")


@pytest.mark.parametrize("fields, path, line, message", [
    ("hash_on: header", "hash_on_header", 3, "field 'hash_on_header' is required when hash_on is 'header'"),
    ("hash_on: ip\n  hash_fallback: header", "hash_fallback_header", 3,
     "field 'hash_fallback_header' is required when hash_fallback is 'header'"),
    ("hash_on: cookie", "hash_on_cookie", 3, "field 'hash_on_cookie' is required when hash_on is 'cookie'"),
    ("hash_on: ip\n  hash_fallback: cookie", "hash_on_cookie", 3,
     "field 'hash_on_cookie' is required when hash_fallback is 'cookie'"),
    ("hash_on: query_arg", "hash_on_query_arg", 3, "is required when hash_on is 'query_arg'"),
    ("hash_on: uri_capture", "hash_on_uri_capture", 3, "is required when hash_on is 'uri_capture'"),
    ("hash_on: ip\n  hash_fallback: ip", "hash_fallback", 5, "must differ from hash_on ('ip')"),
    ("hash_on: path\n  hash_fallback: path", "hash_fallback", 5, "must differ from hash_on ('path')"),
    ("hash_fallback: ip", "hash_fallback", 4, "must be 'none' when hash_on is 'none'"),
    ("hash_on: cookie\n  hash_on_cookie: c\n  hash_fallback: ip", "hash_fallback", 6,
     "must be 'none' when hash_on is 'cookie'"),
    ("hash_on: header\n  hash_on_header: X-A\n  hash_fallback: header\n  hash_fallback_header: x-a",
     "hash_fallback_header", 7, "must differ from hash_on_header ('X-A')"),
    ("hash_on: query_arg\n  hash_on_query_arg: a\n  hash_fallback: query_arg\n  hash_fallback_query_arg: a",
     "hash_fallback_query_arg", 7, "must differ from hash_on_query_arg"),
    ("hash_on: header\n  hash_on_header: 'bad name'", "hash_on_header", 5, "invalid header name"),
    ("hash_on: cookie\n  hash_on_cookie: 'a;b'", "hash_on_cookie", 5, "invalid cookie name"),
    ("hash_on: path\n  hash_fallback: sideways", "hash_fallback", 5, "invalid value 'sideways'"),
    ("algorithm: sticky-sessions", "algorithm", 4, "algorithm 'sticky-sessions' is not supported by gwanmun yet"),
    ("algorithm: random", "algorithm", 4, "invalid algorithm 'random'"),
    ("slots: 5", "slots", 4, "must be between 10 and 65536"),
])
def test_config_validation_errors(fields: str, path: str, line: int, message: str) -> None:
    text = '_format_version: "3.0"\nupstreams:\n- name: u\n  ' + fields + "\n"
    with pytest.raises(ConfigError) as exc:
        load_text(text, filename="kong.yml", env={})
    issues = exc.value.issues
    assert [i.path for i in issues] == [("upstreams", 0, path)], str(exc.value)
    assert message in issues[0].message
    assert issues[0].line == line
    assert str(exc.value).startswith(f"kong.yml:{line}: upstreams[0].{path}: ")


def test_config_accepts_every_algorithm_and_hash_kind() -> None:
    for algorithm in ("round-robin", "least-connections", "latency", "consistent-hashing"):
        runtime(f"upstreams:\n- name: u\n  algorithm: {algorithm}\n")
    for kind, extra in (("consumer", ""), ("ip", ""), ("path", ""), ("header", "hash_on_header: X-A"),
                        ("cookie", "hash_on_cookie: c"), ("query_arg", "hash_on_query_arg: q"),
                        ("uri_capture", "hash_on_uri_capture: id")):
        runtime(f"upstreams:\n- name: u\n  algorithm: consistent-hashing\n  hash_on: {kind}\n  {extra}\n")
    runtime("upstreams:\n- name: u\n  hash_on: header\n  hash_on_header: X-A\n  hash_fallback: header\n"
            "  hash_fallback_header: X-B\n  hash_on_cookie_path: null\n")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=8), st.integers(1, 500))
def test_ring_add_moves_keys_only_to_the_new_target_for_any_weights(weights: list[int], new_weight: int) -> None:
    ts = targets(*weights, new_weight)
    before, after = ConsistentHashing(ts[:-1], slots=500), ConsistentHashing(ts, slots=500)
    new_label = ts[-1].label
    moved = [b for a, b in zip(before.ring, after.ring) if a != b]
    assert all(after.targets[i].label == new_label for i in moved)
    share = sum(1 for i in after.ring if i == len(ts) - 1) / 500
    assert share == pytest.approx(new_weight / sum(weights + [new_weight]), abs=0.12)


def test_services_on_one_upstream_share_its_balancer() -> None:
    text = textwrap.dedent('''
        _format_version: "3.0"
        upstreams:
        - name: u
          algorithm: least-connections
          targets: [{target: "10.0.0.1:80"}, {target: "10.0.0.2:80"}]
        services:
        - {name: a, host: u, routes: [{name: a, paths: [/a]}]}
        - {name: b, host: u, routes: [{name: b, paths: [/b]}]}
        - {name: c, host: u, protocol: https, routes: [{name: c, paths: [/c]}]}
    ''').lstrip("\\n")
    a, b, c = compile_runtime(load_text(text, filename="kong.yml", env={})).services
    assert a.balancer is b.balancer  # one set of in-flight counts for the upstream, as in Kong
    assert c.balancer is not a.balancer  # https: other Host/TLS on its targets
    assert isinstance(c.balancer, LeastConnections)

#!/usr/bin/env python3
"""Micro-benchmark of Router.match: 10 vs 10,000 routes, several route shapes.

    python bench/router_micro.py [--rounds 5] [--n 200000]

For each shape and size it prints ns per match for:
  hot     100 distinct requests repeated (the LRU answers, when the router has no header routes)
  cold    every request path unique (LRU misses; for header routers: the index every time)
  index   the index alone (Router._match, no LRU), same unique requests as "cold"
Best of --rounds rounds, in CPU time of this process (steadier than wall time on a shared box).
Standalone: no test framework, no network.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gwanmun.routing import RouteEntry, Router  # noqa: E402

REGEXES = [r"~/users/(?<id>\d+)$", r"~/orders/\d+/items/(?<item>\w+)", r"~/v(?<ver>\d)/status",
           r"~/files/.+\.(png|jpg)$", r"~(?i)/webhook/(?<name>[a-z0-9-]+)"]


def _entry(i, **kw):
    return RouteEntry(name=f"r{i}", index=i, **kw)


def shape_prefix(n):
    """Distinct prefix paths /svc<i>, plus 5 regex routes."""
    routes = [_entry(i, paths=(f"/svc{i}",)) for i in range(n)]
    routes += [_entry(n + j, paths=(rx,)) for j, rx in enumerate(REGEXES)]

    def request(rng, k):
        i = rng.randrange(n)
        return ("GET", "gw.example.com", f"/svc{i}/items/{k}", None)
    return routes, request


def shape_hosts(n):
    """Distinct exact hosts, each with path /, plus one wildcard host and 5 regex routes."""
    routes = [_entry(i, hosts=(f"h{i}.example.com",), paths=("/",)) for i in range(n)]
    routes.append(_entry(n, hosts=("*.example.org",)))
    routes += [_entry(n + 1 + j, paths=(rx,)) for j, rx in enumerate(REGEXES)]

    def request(rng, k):
        i = rng.randrange(n)
        return ("GET", f"h{i}.example.com", f"/api/{k}", None)
    return routes, request


def shape_mixed(n):
    """A third each: prefix only, host only, host + prefix + method; 5 regex routes."""
    routes = []
    for i in range(n):
        if i % 3 == 0:
            routes.append(_entry(i, paths=(f"/svc{i}",)))
        elif i % 3 == 1:
            routes.append(_entry(i, hosts=(f"h{i}.example.com",)))
        else:
            routes.append(_entry(i, hosts=("api.example.com",), paths=(f"/v1/t{i}/",), methods=frozenset({"GET"})))
    routes += [_entry(n + j, paths=(rx,)) for j, rx in enumerate(REGEXES)]

    def request(rng, k):
        i = rng.randrange(n)
        if i % 3 == 0:
            return ("GET", "gw.example.com", f"/svc{i}/x/{k}", None)
        if i % 3 == 1:
            return ("GET", f"h{i}.example.com", f"/x/{k}", None)
        return ("GET", "api.example.com", f"/v1/t{i}/{k}", None)
    return routes, request


def shape_headers(n):
    """Prefix routes; 1 in 50 also needs a header (so the router matches on headers: no LRU)."""
    routes = []
    for i in range(n):
        hd = ((("x-tenant", (f"t{i}",)),) if i % 50 == 0 else ())
        routes.append(_entry(i, paths=(f"/svc{i}",), headers=hd))
    routes += [_entry(n + j, paths=(rx,)) for j, rx in enumerate(REGEXES)]

    def request(rng, k):
        i = rng.randrange(n)
        return ("GET", "gw.example.com", f"/svc{i}/items/{k}", {"x-tenant": [f"t{i}"], "accept": ["*/*"]})
    return routes, request


def shape_regex_hit(n):
    """Prefix routes, requests that hit one of the 5 regex routes."""
    routes, _ = shape_prefix(n)

    def request(rng, k):
        return ("GET", "gw.example.com", f"/users/{k}", None)
    return routes, request


SHAPES = {"prefix": shape_prefix, "hosts": shape_hosts, "mixed": shape_mixed, "headers": shape_headers,
          "regex-hit": shape_regex_hit}


def _time(fn, reqs, rounds):
    best = None
    for _ in range(rounds):
        t0 = time.process_time_ns()
        for method, host, path, headers in reqs:
            fn(method, host, path, "http", headers)
        dt = (time.process_time_ns() - t0) / len(reqs)
        best = dt if best is None or dt < best else best
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=100_000, help="requests per round")
    ap.add_argument("--sizes", default="10,10000")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"python {sys.version.split()[0]}, {args.n} requests x best of {args.rounds} rounds; CPU ns per match")
    print(f"{'shape':<10} {'routes':>7} {'build ms':>9} {'hot':>7} {'cold':>7} {'index':>7}  matched")
    for name, shape in SHAPES.items():
        for n in sizes:
            routes, request = shape(n)
            t0 = time.perf_counter()
            router = Router(routes)
            build_ms = (time.perf_counter() - t0) * 1000
            rng = random.Random(42)
            hot_set = [request(rng, k % 7) for k in range(100)]
            hot = [hot_set[k % 100] for k in range(args.n)]
            cold = [request(rng, 1_000_000 + k) for k in range(args.n)]
            matched = sum(router._match(m, h, p, "http", hd, None) is not None for m, h, p, hd in cold[:1000])
            t_hot = _time(router.match, hot, args.rounds)
            t_cold = _time(router.match, cold, args.rounds)
            t_index = _time(lambda m, h, p, s, hd: router._match(m, h, p, s, hd, None), cold, args.rounds)
            print(f"{name:<10} {n:>7} {build_ms:>9.1f} {t_hot:>7.0f} {t_cold:>7.0f} {t_index:>7.0f}  "
                  f"{matched / 10:.0f}%")


if __name__ == "__main__":
    main()

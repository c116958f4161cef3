"""The request router: Kong 3.x ``traditional_compatible`` semantics, indexed for 10k+ routes.

Which route matches
-------------------
A route matches a request when *every* category it configures matches (a category it leaves empty
matches anything): ``methods`` (exact, case-sensitive), ``hosts``, ``paths`` and ``headers``.

* Hosts: an entry without a port compares with the ``Host`` header's host part, whatever its port;
  an entry with a port (``example.com:8080``) also needs that port, taken from the ``Host`` header or,
  when the header has none, from the port the request came in on (``server_port``; defaults to the
  scheme's port).  ``*.example.com`` matches any host ending in ``.example.com``; ``example.*`` any
  host starting with ``example.``.  Comparison is case-insensitive.
* Paths: a plain path is a string prefix of the request path (``/foo`` matches ``/foobar``); a path
  starting with ``~`` is a regex anchored at the start of the path but not at its end
  (``gwanmun.config.compile_path_regex``: ``^(?:...)``).  Its named and numbered groups become
  ``captures``, plus the whole match as ``0``, as Kong 3.x does.
* Headers: every configured header must be present, and one of its values must equal one of the
  configured values (case-insensitively) or match a ``~*regex`` value (searched anywhere in the
  value, case-insensitively).
* ``protocols`` does not take part in matching here: an ``https``-only route still matches a
  plain-http request, and Kong then answers 426 or redirects (see :func:`requires_https`).  An
  https request does not match an ``http``-only route in Kong 3.x: ``routing/schemes.py`` builds a
  second router without those routes for https requests.  Routes for stream protocols only (tcp,
  tls, udp, tls_passthrough) are left out of this HTTP router.

Which route wins (Kong's ``kong/router/transform.lua`` ``get_priority`` and
``split_routes_and_services_by_path``, read for 3.x)
-------------------------------------------------------------------------------------------------
A route with several paths is first split in parts: one for all its regex paths, one per distinct
length of its plain paths.  Each part is ranked on its own; among all parts that match, the highest
rank wins, comparing in this order:

1. how many of methods / hosts / headers / paths the route sets (more wins);
2. the route has hosts and none of them is a wildcard (wins over wildcard hosts and no hosts);
3. the number of distinct header names (more wins);
4. a regex part wins over a plain-path part;
5. between regex parts: the higher ``regex_priority``;
6. between plain parts: the longer path;
7. then the route that comes first in the configuration (Kong falls back to route ids there).

So a regex path beats a plain prefix of the same route shape whatever its length, and a longer
plain prefix beats a shorter one.  Within the winning part, the first of its regex paths (in config
order) that matches provides ``matched_path`` and ``captures``.

Kong computes this as one 64-bit number; we compare the same fields as a tuple, which is what that
layout intends (Kong's docs list the same order).

Where we knowingly differ from Kong
-----------------------------------
* Kong's LuaJIT ``get_priority`` shifts the category count, the header count and ``regex_priority``
  as plain Lua numbers, so ``bit.lshift`` works on 32 bits (shift count mod 32): they land on bits
  29, 20 and 19 and overlap (checked with LuaJIT 2.1; Kong issue #14457, regex_priority ignored once
  headers are set).  We rank by the intended fields.  A negative ``regex_priority`` ranks below 0.
* Every top-level alternative of a regex path is anchored (``~/a|/b`` does not match ``/x/b``), as in
  Kong's ``traditional`` router and docs/config.md; Kong 3.x's default prepends a bare ``^``, which
  anchors only the first alternative.
* Host names compare case-insensitively (RFC 3986; Kong 3.x compares them as sent, PR #14198 open).
* ``Host: [::1]:8000`` is split at the bracket (Kong splits at the first ``:``).
* ``~*`` header regexes run case-insensitively on the lower-cased value; Kong lower-cases the
  pattern itself, which turns ``\\D`` into ``\\d`` and similar.
* Ties: config order (Kong: route ids).  ``captures`` only come from the path regex (Kong's also
  picks up groups of ``~*`` header regexes).  No ``snis``/``sources``/``destinations``.

Speed
-----
Everything is precomputed in ``__init__``; ``match`` looks up candidates in a host -> path index
(exact hosts), then, per distinct prefix length present, ``path[:L]`` in a dict; regex parts with a
literal prefix (``~/users/\\d+`` -> ``/users/``) live in the same dicts; the rest is a short list.
Candidates are kept in rank order, so the first full match in a bucket is that bucket's best.
Routers without header routes also keep an LRU of recent (method, host, path) results.
Sample of ``python bench/router_micro.py`` (ns per match)::

    python 3.11.7, 40000 requests x best of 7 rounds; CPU ns per match
    shape       routes  build ms     hot    cold   index  matched
    prefix          10       1.4     157    1321    1019  100%
    prefix       10000     105.7     111    2119    1370  100%
    hosts           10       0.3     148     703     489  100%
    hosts        10000      73.4     132    1342     662  100%
    mixed           10       0.3     124    1215     963  100%
    mixed        10000      91.7     122    2286    1723  100%
    headers         10       0.3    1002    1149    1115  100%
    headers      10000     119.4    1292    2058    1880  100%
    regex-hit       10       5.3     116    1996    1674  100%
    regex-hit    10000      54.4     143    2002    1578  100%

(2-core shared box, other jobs running.  "hot" = LRU hit; a miss adds ~200-300 ns to "index".)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import orjson
from dataclasses import dataclass, field
from functools import lru_cache

from ..config.model import compile_header_regex, compile_path_regex
from ._regex import literal_prefix

__all__ = ["RouteEntry", "RouteMatch", "Router", "requires_https", "route_priority"]

HTTP_PROTOCOLS = frozenset({"http", "https", "grpc", "grpcs", "ws", "wss"})
_DEFAULT_PORT = {"http": 80, "https": 443, "grpc": 80, "grpcs": 443, "ws": 80, "wss": 443}
_MAX_HEADER_COUNT = 255
_MAX_LENGTH_MASK = 0x7FFFF
_CACHE_SIZE = 8192

_KIND_NONE = 0
_KIND_PREFIX = 1
_KIND_REGEX = 2


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One configured route, as the config compile step hands it to the router."""

    name: str | None = None
    id: str | None = None
    protocols: frozenset[str] = frozenset({"http", "https"})
    methods: frozenset[str] = frozenset()
    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    regex_priority: int = 0
    strip_path: bool = True
    path_handling: str = "v0"
    preserve_host: bool = False
    https_redirect_status_code: int = 426  # answer to an https-only route reached over http (see proxy.py)
    target: object = field(default=None, compare=False)
    index: int = 0
    fault: object = field(default=None, compare=False)  # resilience.fault.FaultSpec, or None
    mirror: object = field(default=None, compare=False)  # upstream.mirror.MirrorSpec, or None
    plugins: object = field(default=None, compare=False)  # plugins.chain.Chain, or None: no plugin applies
    splits: object = field(default=None, compare=False)  # routing.identity.Splits, or None
    # the route as the access log shows it, JSON-encoded once here rather than per request
    log_name: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        if not self.log_name:
            object.__setattr__(self, "log_name", orjson.dumps(self.name or self.id))


@dataclass(slots=True)
class RouteMatch:
    """The winning route.  Shared between requests when cached: treat as read-only."""

    route: RouteEntry
    matched_path: str | None  # the plain prefix, or the regex-matched text; None when no path matched
    captures: dict  # {0: whole match, 1..n: groups that took part, name: value}; {} when none
    matched_host: str | None  # the route's hosts entry that matched


def requires_https(route: RouteEntry, forwarded_proto: str) -> bool:
    """Kong's post-match check: an https-only route reached over plain http gets 426 (or a redirect)."""
    p = route.protocols
    return "https" in p and "http" not in p and forwarded_proto != "https"


def _split_host(value: str) -> tuple[str, int | None]:
    """``Host`` value -> (lower-case host, port or None).  A port that is not a number stays in the host."""
    if value.startswith("["):  # IPv6 literal
        end = value.find("]")
        if end > 0:
            rest = value[end + 1:]
            if not rest:
                return value.lower(), None
            if rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit():
                return value[: end + 1].lower(), int(rest[1:])
        return value.lower(), None
    i = value.find(":")
    if i < 0:
        return value.lower(), None
    port = value[i + 1:]
    if port.isascii() and port.isdigit():
        return value[:i].lower(), int(port)
    return value.lower(), None


class _Hosts:
    """A route's ``hosts``, compiled."""

    __slots__ = ("entries", "exact", "exact_port", "ordered", "names", "has_port")

    def __init__(self, hosts: Sequence[str]):
        self.exact: dict[str, str] = {}
        self.exact_port: dict[tuple[str, int], str] = {}
        # (kind, text, port, entry) in config order; kind: 0 exact, 1 "*.x" (suffix), 2 "x.*" (prefix)
        ordered: list[tuple[int, str, int | None, str]] = []
        names: set[str] = set()
        wild = False
        self.has_port = False
        for raw in hosts:
            entry = raw.lower()
            name, port = _split_host(entry)
            if port is not None:
                self.has_port = True
            if name.startswith("*"):
                ordered.append((1, name[1:], port, raw))
                wild = True
            elif name.endswith("*"):
                ordered.append((2, name[:-1], port, raw))
                wild = True
            else:
                ordered.append((0, name, port, raw))
                names.add(name)
                if port is None:
                    self.exact.setdefault(name, raw)
                else:
                    self.exact_port.setdefault((name, port), raw)
        self.ordered = tuple(ordered) if wild else None
        # the exact names when there is no wildcard: such a route can be indexed by host
        self.names = None if wild else frozenset(names)
        self.entries = tuple(hosts)

    def match(self, name: str, port: int) -> str | None:
        ordered = self.ordered
        if ordered is None:
            e = self.exact.get(name)
            if e is None and self.exact_port:
                e = self.exact_port.get((name, port))
            return e
        for kind, text, p, entry in ordered:
            if p is not None and p != port:
                continue
            if kind == 0:
                if name == text:
                    return entry
            elif kind == 1:
                if name.endswith(text):
                    return entry
            elif name.startswith(text):
                return entry
        return None


def _compile_headers(headers) -> tuple[tuple[str, frozenset[str], tuple[re.Pattern, ...]], ...]:
    merged: dict[str, list[str]] = {}
    for name, values in headers:
        key = name.lower().replace("_", "-")  # Kong/nginx: x_foo and x-foo name the same header
        merged.setdefault(key, []).extend(values)
    out = []
    for name, values in merged.items():
        exact = set()
        regs = []
        for v in values:
            if v.startswith("~*"):
                regs.append(compile_header_regex(v))
            else:
                exact.add(v.lower())
        out.append((name, frozenset(exact), tuple(regs)))
    return tuple(out)


def _headers_match(spec, headers) -> bool:
    if headers is None:
        return False
    for name, exact, regs in spec:
        values = headers.get(name)
        if not values:
            return False
        if isinstance(values, str):
            values = (values,)
        for v in values:
            lv = v.lower()
            if lv in exact:
                break
            if regs:
                for r in regs:
                    if r.search(lv) is not None:
                        break
                else:
                    continue
                break
        else:
            return False
    return True


def _compile_path_regex(route: RouteEntry, path: str) -> re.Pattern:
    try:
        return compile_path_regex(path)
    except (re.error, ValueError) as e:
        name = route.name or route.id or route.index
        raise ValueError(f"route {name!r}: invalid regex path {path!r}: {e}") from None


class _Part:
    """A route, or one path group of a route (Kong splits routes by path kind and length)."""

    __slots__ = ("route", "kind", "prefixes", "regexes", "methods", "hosts", "headers", "key", "rank",
                 "index_prefix", "simple", "static")

    def __init__(self, route: RouteEntry, kind: int, paths: tuple[str, ...], hosts: _Hosts | None, headers):
        self.route = route
        self.kind = kind
        self.prefixes = paths if kind == _KIND_PREFIX else ()
        self.regexes = tuple(_compile_path_regex(route, p) for p in paths) if kind == _KIND_REGEX else ()
        self.methods = route.methods or None
        self.hosts = hosts
        self.headers = headers or None
        self.key = _priority(route, kind, paths)
        self.rank = 0
        # a plain-prefix part with no other condition: found in the index means matched
        self.simple = kind == _KIND_PREFIX and self.methods is None and hosts is None and self.headers is None
        self.static = {p: RouteMatch(route, p, {}, None) for p in paths} if self.simple else None
        if kind == _KIND_PREFIX:
            self.index_prefix = paths[0]  # all prefixes of a part have the same length
        elif kind == _KIND_REGEX:
            lits = [literal_prefix(p[1:]) for p in paths]
            common = lits[0]
            for lit in lits[1:]:
                n = 0
                while n < len(common) and n < len(lit) and common[n] == lit[n]:
                    n += 1
                common = common[:n]
            self.index_prefix = common or None
        else:
            self.index_prefix = None


def _priority(route: RouteEntry, kind: int, paths: tuple[str, ...]) -> tuple[int, int, int, int, int, int]:
    """The comparable form of Kong's ``get_priority`` for one route part (bigger wins)."""
    header_names = {n.lower().replace("_", "-") for n, _ in route.headers}
    weight = (1 if route.methods else 0) + (1 if route.hosts else 0) + (1 if header_names else 0) \
        + (1 if kind != _KIND_NONE else 0)
    plain_host_only = 1 if route.hosts and not any("*" in h for h in route.hosts) else 0
    regex = 1 if kind == _KIND_REGEX else 0
    return (
        weight,
        plain_host_only,
        min(len(header_names), _MAX_HEADER_COUNT),
        regex,
        route.regex_priority if regex else 0,
        (len(paths[0]) & _MAX_LENGTH_MASK) if kind == _KIND_PREFIX else 0,
    )


def route_priority(route: RouteEntry) -> list[tuple[int, int, int, int, int, int]]:
    """The priority of each part of ``route`` (for tests and debugging)."""
    return [p.key for p in _split(route, None, ())]


def _split(route: RouteEntry, hosts: _Hosts | None, headers) -> list[_Part]:
    if not route.paths:
        return [_Part(route, _KIND_NONE, (), hosts, headers)]
    regexes: list[str] = []
    by_len: dict[int, list[str]] = {}
    order: list[object] = []  # group creation order, as Kong's group_by_regex_or_length
    for p in route.paths:
        if p.startswith("~"):
            if not regexes:
                order.append("re")
            regexes.append(p)
        else:
            if len(p) not in by_len:
                by_len[len(p)] = []
                order.append(len(p))
            by_len[len(p)].append(p)
    parts = []
    for g in order:
        if g == "re":
            parts.append(_Part(route, _KIND_REGEX, tuple(regexes), hosts, headers))
        else:
            parts.append(_Part(route, _KIND_PREFIX, tuple(by_len[g]), hosts, headers))
    return parts


def _try(part: _Part, method: str, hname: str, hport: int, path: str, headers, key: str | None):
    """Full check of one part.  Returns (matched_path, captures, matched_host) or None.

    ``key`` is the index key the part was found under (``path`` starts with it), or None.
    """
    methods = part.methods
    if methods is not None and method not in methods:
        return None
    kind = part.kind
    matched_path = None
    if kind == _KIND_PREFIX:
        if key is not None:  # found under one of its own prefixes
            matched_path = key
        else:
            for p in part.prefixes:
                if path.startswith(p):
                    matched_path = p
                    break
            else:
                return None
    hosts = part.hosts
    matched_host = None
    if hosts is not None:
        matched_host = hosts.match(hname, hport)
        if matched_host is None:
            return None
    if part.headers is not None and not _headers_match(part.headers, headers):
        return None
    captures = {}
    if kind == _KIND_REGEX:
        for rx in part.regexes:
            m = rx.search(path)
            if m is not None:
                break
        else:
            return None
        matched_path = m.group(0) or None
        if rx.groups:
            captures[0] = m.group(0)
            i = 0
            for g in m.groups():
                i += 1
                if g is not None:
                    captures[i] = g
            for name, g in m.groupdict().items():
                if g is not None:
                    captures[name] = g
            if len(captures) < 2:  # Kong exposes captures only when a group took part
                captures = {}
    return matched_path, captures, matched_host


class _PathIndex:
    """Parts (of one host bucket) by prefix: ``path[:L]`` -> parts in rank order, for each length L.

    ``lengths`` holds (L, dict, best rank in dict) sorted by that rank, so a lookup can stop as soon as
    no remaining length can beat the best match found so far.
    """

    __slots__ = ("lengths", "rest")

    def __init__(self, parts: Sequence[_Part]):
        by_len: dict[int, dict[str, list[_Part]]] = {}
        rest: list[_Part] = []
        for part in parts:  # already in rank order
            key = part.index_prefix
            if key is None:
                rest.append(part)
                continue
            keys = part.prefixes if part.kind == _KIND_PREFIX else (key,)
            for k in dict.fromkeys(keys):
                by_len.setdefault(len(k), {}).setdefault(k, []).append(part)
        lengths = []
        for n, d in by_len.items():
            frozen = {k: tuple(v) for k, v in d.items()}
            lengths.append((min(v[0].rank for v in frozen.values()), n, frozen))
        lengths.sort(key=lambda t: t[0])
        self.lengths = tuple((n, d, r) for r, n, d in lengths)
        self.rest = tuple(rest)


_SMALL_HOST_BUCKET = 16


def _host_item(part: _Part, host: str) -> tuple[_Part, tuple[str, ...] | None, dict | None]:
    """An entry of a small host bucket: (part, prefixes, prebuilt matches) when the host name alone
    decides the host check and nothing but a plain prefix remains to check, else (part, None, None)."""
    h = part.hosts
    if (part.kind == _KIND_REGEX or part.methods is not None or part.headers is not None
            or h.has_port or host not in h.exact):
        return part, None, None
    entry = h.exact[host]
    if part.kind == _KIND_NONE:
        return part, None, {None: RouteMatch(part.route, None, {}, entry)}
    return part, part.prefixes, {p: RouteMatch(part.route, p, {}, entry) for p in part.prefixes}


class Router:
    """Built once from all routes; immutable afterwards.  See the module docstring for the rules."""

    def __init__(self, entries: Sequence[RouteEntry]):
        parts: list[_Part] = []
        for route in sorted(entries, key=lambda r: r.index):
            if route.protocols and not (route.protocols & HTTP_PROTOCOLS):
                continue  # a stream route: not for the HTTP router
            hosts = _Hosts(route.hosts) if route.hosts else None
            headers = _compile_headers(route.headers) if route.headers else None
            parts.extend(_split(route, hosts, headers))
        parts.sort(key=lambda p: p.key, reverse=True)  # stable: config order breaks ties
        for i, p in enumerate(parts):
            p.rank = i
        self._parts = tuple(parts)
        self._nparts = len(parts)
        self.routes = tuple(entries)
        self.uses_headers = any(p.headers is not None for p in parts)
        self.match_cached: Callable[..., RouteMatch | None] | None = None  # set below when no route matches headers
        self._has_ports = any(p.hosts is not None and p.hosts.has_port for p in parts)

        by_host: dict[str, list[_Part]] = {}
        anyhost: list[_Part] = []
        for p in parts:
            if p.hosts is not None and p.hosts.names is not None:
                for name in p.hosts.names:
                    by_host.setdefault(name, []).append(p)
            else:
                anyhost.append(p)
        # a host with few parts: a plain tuple scanned in rank order; with many: its own path index
        self._host_small = {h: tuple(_host_item(p, h) for p in ps)
                            for h, ps in by_host.items() if len(ps) <= _SMALL_HOST_BUCKET}
        self._host_big = {h: _PathIndex(ps) for h, ps in by_host.items() if len(ps) > _SMALL_HOST_BUCKET}
        self._any = _PathIndex(anyhost)

        if not self.uses_headers:
            cached = lru_cache(maxsize=_CACHE_SIZE)(self._match)

            def match(method: str, host: str, path: str, scheme: str = "http",
                      headers: Mapping[str, list[str]] | None = None,
                      server_port: int | None = None) -> RouteMatch | None:
                return cached(method, host, path, scheme, None, server_port)

            match.__doc__ = Router.match.__doc__
            self.match = match  # type: ignore[method-assign]
            self.cache_info = cached.cache_info
            # The proxy calls this directly, positionally: (method, host, path, scheme, None, server_port).
            self.match_cached = cached

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, method: str, host: str, path: str, scheme: str = "http",
              headers: Mapping[str, list[str]] | None = None,
              server_port: int | None = None) -> RouteMatch | None:
        """The best route for a request, or None.

        ``host`` is the raw Host header ("" if absent), ``path`` the normalised path without query,
        ``headers`` lower-case names -> all values (needed only when ``uses_headers``),
        ``server_port`` the port the request came in on (defaults to the scheme's port).
        """
        return self._match(method, host, path, scheme, headers, server_port)

    def _match(self, method, host, path, scheme, headers, server_port):
        if self._has_ports:
            hname, hport = _split_host(host)
            if hport is None:
                hport = server_port if server_port is not None else _DEFAULT_PORT.get(scheme, 80)
        elif ":" in host:
            hname, hport = _split_host(host)[0], 0
        else:
            hname, hport = host.lower(), 0
        best = None
        best_key = None
        best_rank = self._nparts

        small = self._host_small.get(hname)
        if small is not None:
            for part, prefixes, statics in small:
                if statics is not None:  # exact host, no port, no methods/headers, no regex
                    if prefixes is None:
                        best, best_key, best_rank = part, statics[None], part.rank
                        break
                    for p in prefixes:
                        if path.startswith(p):
                            best, best_key, best_rank = part, statics[p], part.rank
                            break
                    else:
                        continue
                    break
                r = _try(part, method, hname, hport, path, headers, None)
                if r is not None:
                    best, best_key, best_rank = part, r, part.rank
                    break
            indexes = (self._any,)
        else:
            big = self._host_big.get(hname)
            indexes = (self._any,) if big is None else (big, self._any)

        plen = len(path)
        for index in indexes:
            for n, d, min_rank in index.lengths:
                if min_rank >= best_rank:
                    break
                if n > plen:
                    continue
                key = path[:n]
                bucket = d.get(key)
                if bucket is None:
                    continue
                for part in bucket:
                    if part.rank >= best_rank:
                        break
                    if part.simple:
                        best, best_key, best_rank = part, key, part.rank
                        break
                    r = _try(part, method, hname, hport, path, headers, key)
                    if r is not None:
                        best, best_key, best_rank = part, r, part.rank
                        break
            for part in index.rest:
                if part.rank >= best_rank:
                    break
                r = _try(part, method, hname, hport, path, headers, None)
                if r is not None:
                    best, best_key, best_rank = part, r, part.rank
                    break
        if best is None:
            return None
        if best_key.__class__ is RouteMatch:
            return best_key
        if best.simple:
            return best.static[best_key]
        matched_path, captures, matched_host = best_key
        return RouteMatch(best.route, matched_path, captures, matched_host)

    def _match_linear(self, method: str, host: str, path: str, scheme: str = "http",
                      headers: Mapping[str, list[str]] | None = None,
                      server_port: int | None = None) -> RouteMatch | None:
        """Reference implementation: every route part in priority order, first full match wins."""
        hname, hport = _split_host(host)
        if hport is None:
            hport = server_port if server_port is not None else _DEFAULT_PORT.get(scheme, 80)
        for part in self._parts:
            r = _try(part, method, hname, hport, path, headers, None)
            if r is not None:
                return RouteMatch(part.route, r[0], r[1], r[2])
        return None

"""The declarative config as pydantic models: Kong 3.x field names and defaults, plus gwanmun's ``gateway:`` block.

Every model is frozen and rejects unknown keys. Validation here is structural and per-entity (types, ranges, Kong's
name/host/path rules, regexes); the cross-entity checks (references, uniqueness) live in ``gwanmun.config.load``,
which is also what turns pydantic's errors into ``ConfigIssue``s with file lines. Use ``load_file``/``load_text``
rather than ``DeclarativeConfig.model_validate`` unless you only need the structure.

Kong fields gwanmun does not implement yet are listed in ``UNSUPPORTED_FIELDS``. Such a field is accepted (and
dropped) only when it is null, empty or at Kong's default, i.e. when it would have no effect; any other value is
rejected by name ("field 'snis' is not supported by gwanmun yet") rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
import warnings
from functools import cached_property, lru_cache
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..resilience.config import BulkheadConfig, CircuitBreakerConfig, FallbackConfig, RetryConfig

__all__ = [
    "ActiveHealthcheck",
    "ActiveHealthy",
    "ActiveUnhealthy",
    "AccessLogRotate",
    "AdminSettings",
    "AdminTokenConfig",
    "CACertificateConfig",
    "CertificateConfig",
    "DeclarativeConfig",
    "GatewayConfig",
    "HealthchecksConfig",
    "IGNORED_FIELDS",
    "KONG_PROTOCOLS",
    "PassiveHealthcheck",
    "PassiveHealthy",
    "PassiveUnhealthy",
    "RegexError",
    "RouteConfig",
    "ServiceConfig",
    "SniConfig",
    "TARGET_DEFAULT_PORT",
    "TargetConfig",
    "TracingSettings",
    "UNSUPPORTED_FIELDS",
    "UpstreamConfig",
    "compile_header_regex",
    "compile_path_regex",
    "describe_extra_field",
    "parse_host_port",
    "translate_regex",
]

# --------------------------------------------------------------------------------------------------------------
# Constants (from Kong 3.x: kong/constants.lua, kong/db/schema/entities/*.lua, kong/templates/kong_defaults.lua)
# --------------------------------------------------------------------------------------------------------------

KONG_PROTOCOLS = ("http", "https", "tcp", "tls", "tls_passthrough", "udp", "grpc", "grpcs", "ws", "wss")
SUPPORTED_SERVICE_PROTOCOLS = ("http", "https")
SUPPORTED_ROUTE_PROTOCOLS = ("http", "https")
HTTPS_REDIRECT_STATUS_CODES = (426, 301, 302, 307, 308)
KONG_ALGORITHMS = ("round-robin", "consistent-hashing", "least-connections", "latency", "sticky-sessions")
KONG_HASH_ON = ("none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture")
HEALTHCHECK_TYPES = ("tcp", "http", "https", "grpc", "grpcs")
TARGET_DEFAULT_PORT = 8000  # Kong's targets DAO appends :8000 to a target without a port
SERVICE_DEFAULT_PORT = 80
MAX_TIMEOUT_MS = 2**31 - 2


# Kong fields (and top-level keys) gwanmun does not implement yet, per entity kind, each with the values that are
# accepted anyway because they have no effect (null and empty collections always are; the tuple lists Kong
# defaults that decK writes out, such as ``use_srv_name: false``).
UNSUPPORTED_FIELDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "root": {
        name: ()
        for name in (
            "_workspace", "_info", "_konnect", "_plugin_configs", "workspaces",
            "vaults", "keys", "key_sets", "filter_chains",
            "parameters", "partials", "licenses",
            "hmacauth_credentials", "oauth2_credentials", "mtls_auth_credentials",
        )
    },
    "service": {
        "filter_chains": (),
    },
    "route": {
        "snis": (),
        "sources": (),
        "destinations": (),
        "filter_chains": (),
        "expression": (),
        "priority": (),
    },
    "upstream": {
        "use_srv_name": (False,),
        "sticky_sessions_cookie": (),
        "sticky_sessions_cookie_path": ("/",),
    },
    "target": {},
    "certificate": {},
    "sni": {},
    "ca_certificate": {},
    "gateway": {
        # kong.conf settings that have no gwanmun equivalent yet
        name: ()
        for name in (
            "real_ip_header", "real_ip_recursive", "headers", "headers_upstream", "admin_listen", "status_listen",
            "stream_listen", "client_ssl", "ssl_prefer_server_ciphers", "ssl_dhparam", "ssl_session_tickets",
            "ssl_session_timeout", "ssl_session_cache_size",
            "dns_order", "dns_no_sync", "dns_cache_size", "error_default_type",
            "proxy_error_log", "log_level", "lua_max_resp_headers", "lua_max_uri_args", "lua_max_post_args",
            "router_flavor", "allow_debug_header",
        )
    },
}

# Kong bookkeeping keys accepted on every entity and ignored (``_comment``/``_ignore`` are declarative-format
# annotations; the timestamps appear in ``kong config db_export`` output).
IGNORED_FIELDS = ("_comment", "_ignore", "created_at", "updated_at")

# kong.conf names that gwanmun spells differently in ``gateway:``.
GATEWAY_RENAMED = {
    "proxy_listen": "listen",
    "proxy_access_log": "access_log",
    "lua_max_req_headers": "max_headers",
    "nginx_http_keepalive_timeout": "keepalive_timeout",
    "nginx_worker_processes": "workers",
    "nginx_http_client_header_timeout": "client_header_timeout",
    "nginx_http_client_body_timeout": "client_body_timeout",
    "nginx_events_worker_connections": "max_connections",
    # nginx directives injected through kong.conf (nginx_http_*/nginx_proxy_* prefixes)
    "nginx_http_underscores_in_headers": "underscores_in_headers",
    "nginx_proxy_underscores_in_headers": "underscores_in_headers",
    "nginx_http_merge_slashes": "merge_slashes",
    "nginx_proxy_merge_slashes": "merge_slashes",
    # the Admin API and its storage (issue 7): one ``admin:`` block
    "admin_listen": "admin.listen",
    "database": "admin.database",
}


def describe_extra_field(kind: str | None, name: str) -> str:
    """The message for a key that is not a field of entity ``kind`` ('root', 'service', 'route', ...)."""
    if kind == "gateway" and name in GATEWAY_RENAMED:
        return f"unknown field '{name}' (gwanmun calls this setting '{GATEWAY_RENAMED[name]}')"
    if kind is not None and name in UNSUPPORTED_FIELDS.get(kind, {}):
        return f"field '{name}' is not supported by gwanmun yet"
    if kind in ("service", "route") and name == "service":
        return "a route nested under a service must not set 'service'"
    return f"unknown field '{name}'"


def _is_inert(value: Any, defaults: tuple[Any, ...]) -> bool:
    if value is None or value == [] or value == {}:
        return True
    return any(type(value) is type(d) and value == d for d in defaults)


def _err(kind: str, message: str, /, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, ctx or None)


def _unsupported(what: str) -> PydanticCustomError:
    return _err("unsupported", "{what} is not supported by gwanmun yet", what=what)


# --------------------------------------------------------------------------------------------------------------
# Scalar types and Kong's value rules
# --------------------------------------------------------------------------------------------------------------


def _between(lo: float, hi: float):
    def check(v):
        if not lo <= v <= hi:
            raise _err("out_of_range", "must be between {lo} and {hi}, got {value}", lo=lo, hi=hi, value=v)
        return v

    return AfterValidator(check)


def _at_least(lo: float):
    def check(v):
        if v < lo:
            raise _err("out_of_range", "must be at least {lo}, got {value}", lo=lo, value=v)
        return v

    return AfterValidator(check)


Str = Annotated[str, Strict()]
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]


def _check_uuid(v: str) -> str:
    try:
        uuid.UUID(v)
    except ValueError:
        raise _err("uuid", "invalid id '{value}': expected a UUID", value=v) from None
    if len(v) != 36:
        raise _err("uuid", "invalid id '{value}': expected a UUID like 123e4567-e89b-12d3-a456-426614174000", value=v)
    return v


def _check_name(v: str) -> str:
    # Kong's typedefs.utf8_name: ASCII alphanumerics and . - _ ~, plus any non-ASCII character
    if not v or any(c.isascii() and not (c.isalnum() or c in ".-_~") for c in v):
        raise _err(
            "name",
            "invalid name '{value}': the only accepted ASCII characters are alphanumerics and . - _ ~",
            value=v,
        )
    return v


def _check_tag(v: str) -> str:
    # Kong's typedefs.tag: printable ASCII except ',' and '/', or non-ASCII
    if not v or any(c.isascii() and (not (" " <= c <= "~") or c in ",/") for c in v):
        raise _err("tag", "invalid tag '{value}': use printable characters other than ',' and '/'", value=v)
    return v


_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _check_header_name(v: str) -> str:
    if not _HEADER_NAME.fullmatch(v):
        raise _err(
            "header_name",
            "invalid header name '{value}': allowed characters are A-Z, a-z, 0-9, '_' and '-'",
            value=v,
        )
    return v


Id = Annotated[str, Strict(), AfterValidator(_check_uuid)]
Name = Annotated[str, Strict(), AfterValidator(_check_name)]
Tag = Annotated[str, Strict(), AfterValidator(_check_tag)]
HeaderName = Annotated[str, Strict(), AfterValidator(_check_header_name)]
Port = Annotated[int, Strict(), _between(0, 65535)]
TimeoutMs = Annotated[int, Strict(), _between(1, MAX_TIMEOUT_MS)]
DeadlineMs = Annotated[int, Strict(), _between(0, MAX_TIMEOUT_MS)]  # 0: none


# ---- hosts and addresses (Kong's kong.tools.ip normalize_ip / check_hostname) ---------------------------------

_HOSTNAME_CHARS = re.compile(r"[0-9A-Za-z._-]+")
_IPV4_PORT = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?::(\d+))?")


@lru_cache(maxsize=4096)
def parse_host_port(address: str) -> tuple[str, str, int | None]:
    """Kong's ``normalize_ip``: ``(kind, host, port)`` with kind 'ipv4', 'ipv6' or 'name'; port None if absent.

    Accepts ``name``, ``name:port``, ``1.2.3.4``, ``1.2.3.4:port``, ``::1``, ``[::1]`` and ``[::1]:port``. IPv6 hosts
    are returned without brackets, in compressed form. Raises ``ValueError`` with a short reason.
    """
    if address.count(":") > 1:  # IPv6, with or without brackets
        port: int | None = None
        host = address
        if address.startswith("["):
            end = address.find("]")
            if end < 0:
                raise ValueError("invalid IPv6 address")
            host, rest = address[1:end], address[end + 1 :]
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise ValueError("invalid IPv6 address")
                port = int(rest[1:])
        if "%" in host:
            raise ValueError("invalid IPv6 address (zone ids are not allowed)")
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("invalid IPv6 address") from None
        if port is not None and port > 65535:
            raise ValueError("invalid port number")
        return "ipv6", str(ip), port
    if re.fullmatch(r"[\d.]+(?::\d*)?", address) and re.fullmatch(r"[\d.]+", address.split(":")[0]):
        m = _IPV4_PORT.fullmatch(address)
        if not m or any(int(m.group(i)) > 255 for i in range(1, 5)):
            raise ValueError("invalid IPv4 address")
        port = int(m.group(5)) if m.group(5) is not None else None
        if port is not None and port > 65535:
            raise ValueError("invalid port number")
        return "ipv4", ".".join(str(int(m.group(i))) for i in range(1, 5)), port
    name, port = address, None
    m = re.search(r":(\d+)$", address)
    if m:
        name, port = address[: m.start()], int(m.group(1))
        if port > 65535:
            raise ValueError("invalid port number")
    if not _HOSTNAME_CHARS.fullmatch(name):
        raise ValueError("invalid hostname")
    labels = name.split(".")
    for i, label in enumerate(labels):
        if label.endswith("-") or (label == "" and i != len(labels) - 1) or name == ".":
            raise ValueError("invalid hostname")
    return "name", name, port


def _check_host(v: str) -> str:
    """Kong's typedefs.host: an IP or hostname without a port."""
    try:
        _, _, port = parse_host_port(v)
    except ValueError as e:
        raise _err("host", "invalid host '{value}': {reason}", value=v, reason=str(e)) from None
    if port is not None:
        raise _err("host", "invalid host '{value}': must not have a port (use 'port')", value=v)
    return v


def _check_host_with_optional_port(v: str) -> str:
    try:
        parse_host_port(v)
    except ValueError as e:
        raise _err("host", "invalid host '{value}': {reason}", value=v, reason=str(e)) from None
    return v


def _check_sni(v: str) -> str:
    try:
        kind, _, port = parse_host_port(v)
    except ValueError as e:
        raise _err("sni", "invalid SNI '{value}': {reason}", value=v, reason=str(e)) from None
    if kind != "name":
        raise _err("sni", "invalid SNI '{value}': must not be an IP address", value=v)
    if port is not None:
        raise _err("sni", "invalid SNI '{value}': must not have a port", value=v)
    return v


def _check_sni_name(v: str) -> str:
    """Kong's snis ``name`` (typedefs.wildcard_host): a hostname, ``*.example.com``, ``example.*`` or ``*`` (the
    catch-all); no IP, no port. Lower-cased."""
    v = v.lower()
    if v == "*":
        return v
    if v.count("*") > 1:
        raise _err("sni", "invalid SNI '{value}': only one wildcard must be specified", value=v)
    if "*" in v and not (v.startswith("*.") or v.endswith(".*")):
        raise _err("sni", "invalid SNI '{value}': the wildcard must be the leftmost or rightmost label "
                          "('*.example.com' or 'example.*')", value=v)
    try:
        kind, _, port = parse_host_port(v.replace("*", "wildcard"))
    except ValueError as e:
        raise _err("sni", "invalid SNI '{value}': {reason}", value=v, reason=str(e)) from None
    if kind != "name":
        raise _err("sni", "invalid SNI '{value}': must not be an IP address", value=v)
    if port is not None:
        raise _err("sni", "invalid SNI '{value}': must not have a port", value=v)
    return v


def _check_pem_certificate(v: str) -> str:
    from ..tls import PemError, load_pem_certificates  # cryptography is imported only by configs that use TLS

    try:
        load_pem_certificates(v)
    except PemError as e:
        raise _err("certificate", "{reason}", reason=str(e)) from None
    return v


def _check_pem_key(v: str) -> str:
    from ..tls import PemError, load_pem_key

    try:
        load_pem_key(v)
    except PemError as e:
        raise _err("key", "{reason}", reason=str(e)) from None
    return v


def _check_ca_certificate(v: str) -> str:
    from ..tls import ca_problems

    problem = ca_problems(v)
    if problem:
        raise _err("certificate", "{reason}", reason=problem)
    return v


def _check_upstream_name(v: str) -> str:
    try:
        kind, _, port = parse_host_port(v)
    except ValueError:
        raise _err("upstream_name", "invalid upstream name '{value}': must be a valid hostname", value=v) from None
    if kind != "name":
        raise _err("upstream_name", "invalid upstream name '{value}': no IP addresses allowed", value=v)
    if port is not None:
        raise _err("upstream_name", "invalid upstream name '{value}': no port allowed", value=v)
    return v


def _check_route_host(v: str) -> str:
    """Kong's typedefs.hosts element: at most one '*', as the leftmost or rightmost label; optional port."""
    v = v.lower()
    if v.count("*") > 1:
        raise _err("host", "invalid host '{value}': must have at most one wildcard", value=v)
    if "*" in v:
        hostpart = v.rsplit(":", 1)[0] if re.search(r":\d+$", v) else v
        if not (hostpart.startswith("*.") or hostpart.endswith(".*")):
            raise _err(
                "host", "invalid host '{value}': the wildcard must be the leftmost or rightmost label", value=v
            )
    try:
        parse_host_port(v.replace("*", "abc"))
    except ValueError as e:
        raise _err("host", "invalid host '{value}': {reason}", value=v, reason=str(e)) from None
    return v


# ---- paths ------------------------------------------------------------------------------------------------------

_PATH_CHARS = re.compile(r"[A-Za-z0-9._~\-/%:@!$&'()*+,;=]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]")


def _check_percent(v: str, what: str) -> None:
    m = _BAD_PERCENT.search(v)
    if m:
        raise _err(
            "path", "invalid {what} '{value}': bad percent-encoding at '{bad}'", what=what, value=v,
            bad=v[m.start() : m.start() + 3],
        )


def _check_service_path(v: str) -> str:
    """Kong's typedefs.path: starts with '/', no empty segment, RFC 3986 characters, valid percent-encoding."""
    if not v.startswith("/"):
        raise _err("path", "invalid path '{value}': must start with '/'", value=v)
    if "//" in v:
        raise _err("path", "invalid path '{value}': must not have empty segments ('//')", value=v)
    if not _PATH_CHARS.fullmatch(v):
        raise _err("path", "invalid path '{value}': characters outside RFC 3986 found", value=v)
    _check_percent(v, "path")
    return v


def _normalize_prefix(path: str) -> str:
    """Kong's ``kong.tools.uri.normalize(path, true)``: decode %-escaped unreserved characters, upper-case the hex
    of the others, resolve '.' and '..' segments, merge slashes."""

    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if _UNRESERVED.fullmatch(ch) else "%" + m.group(1).upper()

    path = re.sub(r"%([0-9A-Fa-f]{2})", fix, path)
    path = re.sub(r"/{2,}", "/", path)
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _check_route_path(v: str) -> str:
    """Kong's typedefs.router_path: '/prefix' (normalized) or '~/regex' (must compile); no '//'."""
    if not (v.startswith("/") or v.startswith("~/")):
        raise _err("path", "invalid path '{value}': should start with '/' (prefix) or '~/' (regex)", value=v)
    if "//" in v:
        raise _err("path", "invalid path '{value}': must not have empty segments ('//')", value=v)
    _check_percent(v, "path")
    if v.startswith("~"):
        try:
            compile_path_regex(v)
        except RegexError as e:
            raise _err("regex", "{reason}", reason=str(e)) from None
        return v
    normalized = _normalize_prefix(v)
    if normalized != v:
        raise _err(
            "path", "non-normalized path '{value}', use '{normalized}' instead", value=v, normalized=normalized
        )
    return v


# --------------------------------------------------------------------------------------------------------------
# Regexes: Kong uses PCRE (and Rust's regex in its expressions router); gwanmun uses Python's re.
# --------------------------------------------------------------------------------------------------------------


class RegexError(ValueError):
    """A regex from the config does not compile (after PCRE -> Python translation)."""


_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": r"\s", "word": r"\w", "xdigit": "0-9A-Fa-f", "punct": r"!-/:-@\[-`{-~",
    "blank": r" \t", "cntrl": r"\x00-\x1f\x7f", "print": r" -~", "graph": r"!-~",
}


def translate_regex(pattern: str) -> str:
    """Translate a PCRE pattern (as written in a Kong config) to Python ``re`` syntax and check that it compiles.

    Rewrites named groups ``(?<name>...)`` and ``(?'name'...)`` to ``(?P<name>...)``, back-references ``\\k<name>``
    (also ``\\k'name'``, ``\\k{name}``) to ``(?P=name)``, ``\\z`` to ``\\Z`` and POSIX classes such as
    ``[[:digit:]]``; lookbehinds ``(?<=``/``(?<!`` and everything else are left alone. No anchoring is added (see
    ``compile_path_regex``). Raises ``RegexError`` naming the pattern when the result does not compile, e.g. for
    PCRE-only syntax (``\\Q..\\E``, recursion, inline flags in the middle of the pattern).
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1] if i + 1 < n else ""
            if not in_class and nxt == "k" and i + 2 < n and pattern[i + 2] in "<'{":
                close = {"<": ">", "'": "'", "{": "}"}[pattern[i + 2]]
                j = pattern.find(close, i + 3)
                if j > 0 and _GROUP_NAME.fullmatch(pattern[i + 3 : j]):
                    out.append(f"(?P={pattern[i + 3 : j]})")
                    i = j + 1
                    continue
            if nxt == "z" and not in_class:
                out.append(r"\Z")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
                j = pattern.find(":]", i + 2)
                if j > 0 and pattern[i + 2 : j] in _POSIX_CLASSES:
                    out.append(_POSIX_CLASSES[pattern[i + 2 : j]])
                    i = j + 2
                    continue
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a ']' first in a class is a literal
                out.append("\\]")
                i += 1
            continue
        if pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
            out.append("(?P<")
            i += 3
            continue
        if pattern.startswith("(?'", i):
            j = pattern.find("'", i + 3)
            if j > 0 and _GROUP_NAME.fullmatch(pattern[i + 3 : j]):
                out.append(f"(?P<{pattern[i + 3 : j]}>")
                i = j + 1
                continue
        out.append(c)
        i += 1
    result = "".join(out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(result)
    except re.error as e:
        raise RegexError(f"invalid regex '{pattern}': {e.msg}") from None
    except (RecursionError, OverflowError):
        raise RegexError(f"invalid regex '{pattern}': too complex") from None
    return result


_LEADING_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")


def compile_path_regex(path: str) -> re.Pattern[str]:
    """Compile a regex route path (``~/...``) the way gwanmun matches it: anchored at the start of the path.

    The leading ``~`` is stripped, the rest goes through ``translate_regex`` and the whole pattern is anchored at
    the start (``^(?:...)``; leading inline flags such as ``(?i)`` are kept in front), so ``.match()`` and
    ``.search()`` behave the same. It is not anchored at the end: ``~/items/\\d+`` matches ``/items/42/details``
    unless the pattern ends with ``$``. Named groups become ``(?P<name>...)`` groups.
    """
    if not path.startswith("~"):
        raise RegexError(f"'{path}' is not a regex path (regex paths start with '~')")
    body = translate_regex(path[1:])
    flags = ""
    while True:
        m = _LEADING_FLAGS.match(body)
        if not m:
            break
        flags += m.group(0)
        body = body[m.end() :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.compile(f"{flags}^(?:{body})")


def compile_header_regex(value: str) -> re.Pattern[str]:
    """Compile a route header value written as ``~*regex``: case-insensitive and unanchored (use ``.search``)."""
    if not value.startswith("~*"):
        raise RegexError(f"'{value}' is not a header regex (header regexes start with '~*')")
    body = translate_regex(value[2:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return re.compile(body, re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------------------------


class _Sentinel:
    """Marks an input value that a before-validator found misplaced, so the field's own validator reports it at
    the field's exact location."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _reject_sentinel(v: Any) -> Any:
    if isinstance(v, _Sentinel):
        raise _err("misplaced", "{message}", message=v.message)
    return v


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", serialize_by_alias=True, validate_by_name=False)


class _Entity(_Model):
    """A Kong entity: drops ignored and inert unsupported keys, then lets subclasses reshape the input."""

    _kind: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unsupported = UNSUPPORTED_FIELDS.get(cls._kind, {})
        drop = [
            k
            for k, v in data.items()
            if (k in IGNORED_FIELDS and cls._kind != "gateway") or (k in unsupported and _is_inert(v, unsupported[k]))
        ]
        if drop:
            data = {k: v for k, v in data.items() if k not in drop}
        return cls._prepare(data)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data


def _mark_refs(items: Any, key: str, *, must_have: bool, message: str) -> Any:
    """For a list of entity dicts: put a sentinel in ``key`` where it is missing (must_have) or present (not)."""
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        if isinstance(item, dict):
            present = item.get(key) is not None
            if present != must_have:
                item = {**item, key: _Sentinel(message)}
        out.append(item)
    return out


def _reference(kind: str):
    """A foreign key as Kong's declarative format writes it: a name or id string, or ``{id: ...}``/``{name: ...}``
    (decK). Normalized to the string; it is resolved by name first, then by id, as Kong does."""

    def conv(v: Any) -> Any:
        v = _reject_sentinel(v)
        if isinstance(v, dict):
            keys = set(v)
            if len(keys) == 1 and keys <= {"id", "name"} and isinstance(next(iter(v.values())), str):
                return next(iter(v.values()))
            raise _err(
                "reference", "invalid {kind} reference: expected a {kind} name or id, or a mapping with only "
                "'id' or 'name'", kind=kind,
            )
        return v

    return conv


# --------------------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------------------


def _check_route_protocol(v: str) -> str:
    if v in SUPPORTED_ROUTE_PROTOCOLS:
        return v
    if v in KONG_PROTOCOLS:
        raise _unsupported(f"protocol '{v}'")
    raise _err("enum", "invalid protocol '{value}': expected 'http' or 'https'", value=v)


def _check_method(v: str) -> str:
    up = v.upper()
    if not re.fullmatch(r"[A-Z]+", up):
        raise _err("method", "invalid method '{value}': must contain only letters", value=v)
    return up


def _check_redirect_code(v: int) -> int:
    if v not in HTTPS_REDIRECT_STATUS_CODES:
        raise _err("enum", "invalid value {value}: expected one of 426, 301, 302, 307, 308", value=v)
    return v


def _check_header_values(v: list[str]) -> list[str]:
    if not v:
        raise _err("header_values", "must list at least one value")
    for value in v:
        if value.startswith("~*"):
            try:
                compile_header_regex(value)
            except RegexError as e:
                raise _err("regex", "{reason}", reason=str(e)) from None
    return v


def _dedupe(v: list[Any]) -> list[Any]:
    return list(dict.fromkeys(v))


RouteProtocol = Annotated[str, Strict(), AfterValidator(_check_route_protocol)]
Method = Annotated[str, Strict(), AfterValidator(_check_method)]
RouteHost = Annotated[str, Strict(), AfterValidator(_check_route_host)]
RoutePath = Annotated[str, Strict(), AfterValidator(_check_route_path)]
RouteHeaderName = Annotated[str, Strict(), AfterValidator(_check_header_name)]


class FaultDelayConfig(_Model):
    """gwanmun: delay a share of a route's requests (chaos testing; Envoy's fault filter)."""

    duration: Annotated[int, Strict(), _between(0, MAX_TIMEOUT_MS)] = 0  # ms
    percentage: Annotated[float, Strict(), AllowInfNan(False), _between(0, 100)] = 100.0
    header: HeaderName | None = None  # only requests with this header; a numeric value is the delay in ms


class FaultAbortConfig(_Model):
    """gwanmun: answer a share of a route's requests with an error status at once (chaos testing)."""

    status: Annotated[int, Strict(), _between(200, 599)] = 503
    percentage: Annotated[float, Strict(), AllowInfNan(False), _between(0, 100)] = 100.0
    header: HeaderName | None = None  # only requests with this header; a numeric value is the status


class FaultConfig(_Model):
    delay: FaultDelayConfig | None = None
    abort: FaultAbortConfig | None = None


class MirrorConfig(_Model):
    """gwanmun: shadow a share of a route's requests to another service; its responses are discarded (Envoy's
    ``request_mirror_policies``). Only requests whose body fits in ``body_limit`` bytes are mirrored."""

    service: Str  # a service name or id
    percentage: Annotated[float, Strict(), AllowInfNan(False), _between(0, 100)] = 100.0
    body_limit: Annotated[int, Strict(), _between(0, 16 * 1024 * 1024)] = 65536

    @field_validator("service", mode="before")
    @classmethod
    def _service_ref(cls, v: Any) -> Any:
        return _reference("service")(v)


class SplitConfig(_Model):
    """gwanmun: one rule of a route's ``splits`` (routing by identity, see gwanmun/routing/identity.py)."""

    service: Str  # a service name or id
    consumers: list[Annotated[str, Strict(), Field(min_length=1)]] = Field(default_factory=list)
    consumer_groups: list[Annotated[str, Strict(), Field(min_length=1)]] = Field(default_factory=list)
    claims: dict[Annotated[str, Strict(), Field(min_length=1)], list[str | int | bool]] = Field(default_factory=dict)
    percent: Annotated[float, Strict(), AllowInfNan(False), _between(0, 100)] | None = None

    @field_validator("service", mode="before")
    @classmethod
    def _service_ref(cls, v: Any) -> Any:
        return _reference("service")(v)

    @model_validator(mode="after")
    def _has_condition(self) -> SplitConfig:
        if not (self.consumers or self.consumer_groups or self.claims or self.percent):
            raise _err("split", "a split needs at least one of 'consumers', 'consumer_groups', 'claims', 'percent'")
        for name, values in self.claims.items():
            if not values:
                raise _err("split", "claim '{name}' lists no value", name=name)
        return self


class RouteConfig(_Entity):
    """A Kong route. Matching fields: ``methods``, ``hosts``, ``paths``, ``headers`` (at least one is required).

    ``hosts`` are lower-cased and ``methods`` upper-cased; header names are lower-cased. ``service`` is set only
    on top-level routes (a name or id, see ``DeclarativeConfig.get_service``).
    """

    _kind: ClassVar[str] = "route"

    id: Id | None = None
    name: Name | None = None
    tags: list[Tag] = Field(default_factory=list)
    protocols: Annotated[list[RouteProtocol], AfterValidator(_dedupe)] = Field(
        default_factory=lambda: ["http", "https"], min_length=1
    )
    methods: Annotated[list[Method], AfterValidator(_dedupe)] = Field(default_factory=list)
    hosts: list[RouteHost] = Field(default_factory=list)
    paths: list[RoutePath] = Field(default_factory=list)
    headers: dict[RouteHeaderName, Annotated[list[Str], AfterValidator(_check_header_values)]] = Field(
        default_factory=dict
    )
    https_redirect_status_code: Annotated[int, Strict(), AfterValidator(_check_redirect_code)] = 426
    regex_priority: Int = 0
    strip_path: Bool = True
    path_handling: Literal["v0", "v1"] = "v0"
    preserve_host: Bool = False
    # gwanmun: timeouts for this route's requests, overriding its service's (ms; unset: the service's)
    connect_timeout: TimeoutMs | None = None
    write_timeout: TimeoutMs | None = None
    read_timeout: TimeoutMs | None = None
    request_timeout: DeadlineMs | None = None
    fault: FaultConfig | None = None  # gwanmun: fault injection for chaos tests (delay and/or abort)
    mirror: MirrorConfig | None = None  # gwanmun: traffic mirroring (shadow requests, responses discarded)
    splits: list[SplitConfig] = Field(default_factory=list)  # gwanmun: routing by identity (first match wins)
    plugins: list[PluginEntityConfig] = Field(default_factory=list)
    request_buffering: Bool = True
    response_buffering: Bool = True
    service: Str | None = None

    @field_validator("tags", "protocols", "methods", "hosts", "paths", "plugins", "splits", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_before(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, dict):
            seen: dict[str, str] = {}
            for key in v:
                if not isinstance(key, str):
                    continue
                low = key.lower()
                if low == "host":
                    raise _err(
                        "header_name",
                        "cannot contain 'host' header, which must be specified in the 'hosts' attribute",
                    )
                if low in seen:
                    raise _err(
                        "header_name", "header '{a}' is listed twice (as '{b}'); header names are case-insensitive",
                        a=key, b=seen[low],
                    )
                seen[low] = key
        return v

    @field_validator("headers", mode="after")
    @classmethod
    def _headers_lower(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return {k.lower(): vals for k, vals in v.items()}

    @field_validator("service", mode="before")
    @classmethod
    def _service_ref(cls, v: Any) -> Any:
        return _reference("service")(v)

    @model_validator(mode="after")
    def _has_matcher(self) -> RouteConfig:
        if not (self.methods or self.hosts or self.paths or self.headers):
            raise _err(
                "no_matcher",
                "route has nothing to match on: set at least one of 'methods', 'hosts', 'headers' or 'paths'",
            )
        return self

    @property
    def regex_paths(self) -> list[str]:
        return [p for p in self.paths if p.startswith("~")]

    @property
    def prefix_paths(self) -> list[str]:
        return [p for p in self.paths if not p.startswith("~")]


# --------------------------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------------------------


def _check_service_protocol(v: str) -> str:
    if v in SUPPORTED_SERVICE_PROTOCOLS:
        return v
    if v in KONG_PROTOCOLS:
        raise _unsupported(f"protocol '{v}'")
    raise _err("enum", "invalid protocol '{value}': expected one of {expected}", value=v,
               expected=", ".join(KONG_PROTOCOLS))


def _parse_service_url(url: str) -> dict[str, Any]:
    """Kong's ``url`` shorthand -> protocol/host/port/path. Raises PydanticCustomError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise _err("url", "invalid url '{value}': {reason}", value=url, reason=str(e)) from None
    if not parts.scheme or not parts.netloc:
        raise _err("url", "invalid url '{value}': expected scheme://host[:port][/path]", value=url)
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SERVICE_PROTOCOLS:
        if scheme in KONG_PROTOCOLS:
            raise _unsupported(f"protocol '{scheme}' (from 'url')")
        raise _err("url", "invalid url '{value}': unknown scheme '{scheme}'", value=url, scheme=scheme)
    if parts.username is not None or parts.password is not None:
        raise _err("url", "invalid url: credentials in the url are not supported")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise _err("url", "invalid url '{value}': must not have a query string or fragment", value=url)
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        host = parts.netloc[1 : parts.netloc.index("]")]
    else:
        host = parts.netloc.rsplit(":", 1)[0] if port is not None or parts.netloc.endswith(":") else parts.netloc
    if not host:
        raise _err("url", "invalid url '{value}': missing host", value=url)
    return {
        "protocol": scheme,
        "host": host,
        "port": port if port is not None else (443 if scheme == "https" else SERVICE_DEFAULT_PORT),  # Kong's rule
        "path": parts.path or None,
    }


ServiceProtocol = Annotated[str, Strict(), AfterValidator(_check_service_protocol)]
ServiceHost = Annotated[str, Strict(), AfterValidator(_check_host)]
ServicePath = Annotated[str, Strict(), AfterValidator(_check_service_path)]

_URL_PARTS = ("protocol", "host", "port", "path")
# Kong's services entity checks: these are only allowed (non-null) when the protocol is https.
_TLS_SERVICE_FIELDS = ("client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates")


class ServiceConfig(_Entity):
    """A Kong service: where matched requests go.

    ``url`` is Kong's shorthand for protocol/host/port/path; after validation those four fields are always set
    from it (``path`` is None when there is none) and ``url`` itself is not serialized, so consumers never parse
    it. A ``host`` equal to an upstream's ``name`` means "balance over that upstream's targets".
    """

    _kind: ClassVar[str] = "service"

    id: Id | None = None
    name: Name | None = None
    tags: list[Tag] = Field(default_factory=list)
    url: Str | None = Field(default=None, exclude=True)  # input only: always None after validation
    protocol: ServiceProtocol = "http"
    host: ServiceHost | None = None  # never None after validation
    port: Port = SERVICE_DEFAULT_PORT
    path: ServicePath | None = None
    retries: Annotated[int, Strict(), _between(0, 32767)] = 5
    connect_timeout: TimeoutMs = 60000
    write_timeout: TimeoutMs = 60000
    read_timeout: TimeoutMs = 60000
    request_timeout: DeadlineMs = 0  # gwanmun: overall deadline per request, ms (Envoy's route timeout); 0: none
    enabled: Bool = True
    # TLS to the upstream (protocol https only): see gwanmun/tls.py
    client_certificate: Str | None = None  # a certificate id, presented for mutual TLS
    tls_verify: Bool | None = None  # unset: off, as in Kong (nginx's proxy_ssl_verify)
    tls_verify_depth: Annotated[int, Strict(), _between(0, 64)] | None = None  # unset: 1 (nginx's default)
    ca_certificates: list[Id] | None = None  # ca_certificates ids; unset: the system's trust store
    # gwanmun: resilience (docs/resilience.md); a service with any of them must have a name
    circuit_breaker: CircuitBreakerConfig | None = None
    retry: RetryConfig | None = None
    bulkhead: BulkheadConfig | None = None
    fallback: FallbackConfig | None = None
    plugins: list[PluginEntityConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = cls._prepare_url(data)
        protocol = data.get("protocol", "http")
        if protocol != "https" and isinstance(protocol, str):
            for k in _TLS_SERVICE_FIELDS:
                if data.get(k) is not None and data.get(k) != []:
                    data = {**data, k: _Sentinel(f"'{k}' is only allowed when 'protocol' is 'https' (Kong's rule)")}
        return data

    @classmethod
    def _prepare_url(cls, data: dict[str, Any]) -> dict[str, Any]:
        url = data.get("url")
        if url is None and data.get("host") is None:
            data = {**data, "host": _Sentinel("field 'host' is required (set 'host' or 'url')")}
        if isinstance(url, str):
            conflicts = [k for k in _URL_PARTS if k in data]
            if conflicts:
                listed = ", ".join(f"'{k}'" for k in conflicts)
                data = {**data, "url": _Sentinel(f"'url' cannot be combined with {listed}: use one or the other")}
            else:
                try:
                    parsed = _parse_service_url(url)
                except PydanticCustomError:
                    pass  # reported by the url field validator, at 'url'
                else:
                    data = {**{k: v for k, v in data.items() if k != "url"}, **parsed}
        if "routes" in data:
            data = {
                **data,
                "routes": _mark_refs(
                    data["routes"], "service", must_have=False,
                    message="a route nested under a service must not set 'service'",
                ),
            }
        return data

    @field_validator("host", "tls_verify", "tls_verify_depth", "ca_certificates", mode="before")
    @classmethod
    def _host_present(cls, v: Any) -> Any:
        return _reject_sentinel(v)

    @field_validator("client_certificate", mode="before")
    @classmethod
    def _certificate_ref(cls, v: Any) -> Any:
        return _reference("certificate")(v)

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, v: Any) -> Any:
        v = _reject_sentinel(v)
        if isinstance(v, str):
            _parse_service_url(v)
        return v

    @field_validator("tags", "routes", "plugins", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @model_validator(mode="after")
    def _require_host(self) -> ServiceConfig:
        if self.host is None:
            raise _err("host_required", "field 'host' is required (set 'host' or 'url')")
        return self


# --------------------------------------------------------------------------------------------------------------
# Upstreams, health checks, targets
# --------------------------------------------------------------------------------------------------------------


def _zero_only(what: str):
    def check(v):
        if v != 0:
            raise _err(
                "unsupported",
                "{what} is not supported by gwanmun yet: it must be 0 (Kong's default), got {value}",
                what=what, value=v,
            )
        return v

    return AfterValidator(check)


def _check_hc_type(v: str) -> str:
    if v not in HEALTHCHECK_TYPES:
        raise _err("enum", "invalid type '{value}': expected one of {expected}", value=v,
                   expected=", ".join(HEALTHCHECK_TYPES))
    return v


Seconds = Annotated[float, Strict(), AllowInfNan(False), _between(0, 65535)]
HcCount = Annotated[int, Strict(), _between(0, 255)]
HttpStatuses = list[Annotated[int, Strict(), _between(100, 999)]]
HcType = Annotated[str, Strict(), AfterValidator(_check_hc_type)]


class ActiveHealthy(_Model):
    interval: Seconds = 0  # seconds between probes of healthy targets; 0: none
    http_statuses: HttpStatuses = Field(default_factory=lambda: [200, 302])
    successes: HcCount = 0


class ActiveUnhealthy(_Model):
    interval: Seconds = 0  # seconds between probes of unhealthy targets; 0: none
    http_statuses: HttpStatuses = Field(default_factory=lambda: [429, 404, 500, 501, 502, 503, 504, 505])
    tcp_failures: HcCount = 0
    timeouts: HcCount = 0
    http_failures: HcCount = 0


class ActiveHealthcheck(_Model):
    type: HcType = "http"
    timeout: Seconds = 1
    concurrency: Annotated[int, Strict(), _between(1, 2**31)] = 10
    http_path: ServicePath = "/"
    https_sni: Annotated[str, Strict(), AfterValidator(_check_sni)] | None = None
    https_verify_certificate: Bool = True
    headers: dict[Annotated[str, Strict(), AfterValidator(_check_header_name)], list[Str]] | None = None
    healthy: ActiveHealthy = Field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = Field(default_factory=ActiveUnhealthy)


class PassiveHealthy(_Model):
    http_statuses: HttpStatuses = Field(
        default_factory=lambda: [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                                 300, 301, 302, 303, 304, 305, 306, 307, 308]
    )
    successes: HcCount = 0


class PassiveUnhealthy(_Model):
    http_statuses: HttpStatuses = Field(default_factory=lambda: [429, 500, 503])
    tcp_failures: HcCount = 0
    timeouts: HcCount = 0
    http_failures: HcCount = 0


class PassiveHealthcheck(_Model):
    type: HcType = "http"
    healthy: PassiveHealthy = Field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = Field(default_factory=PassiveUnhealthy)


class HealthchecksConfig(_Model):
    """Kong's upstream ``healthchecks`` record with Kong's defaults (run by gwanmun/upstream/health.py). Active checks
    run when an interval is > 0; passive ones when a passive threshold is > 0. Not supported yet: ``threshold`` other
    than 0 and grpc/grpcs active checks."""

    active: ActiveHealthcheck = Field(default_factory=ActiveHealthcheck)
    passive: PassiveHealthcheck = Field(default_factory=PassiveHealthcheck)
    threshold: Annotated[float, Strict(), AllowInfNan(False), _between(0, 100), _zero_only("healthchecks 'threshold'")] = 0

    @model_validator(mode="after")
    def _active_type(self) -> HealthchecksConfig:
        a = self.active
        if a.type in ("grpc", "grpcs") and (a.healthy.interval or a.unhealthy.interval):
            raise _err("unsupported", "active health checks of type '{value}' are not supported by gwanmun yet "
                       "(use http, https or tcp)", value=a.type)
        return self


def _check_target(v: str) -> str:
    try:
        parse_host_port(v)
    except ValueError:
        raise _err("target", "invalid target '{value}': not a valid hostname or IP address", value=v) from None
    return v


class TargetConfig(_Entity):
    """A Kong target: one address of an upstream. ``host``/``port`` give the parsed address (port 8000 when the
    target has none, as in Kong; IPv6 without brackets). ``weight`` 0 disables the target."""

    _kind: ClassVar[str] = "target"

    id: Id | None = None
    target: Annotated[str, Strict(), AfterValidator(_check_target)]
    weight: Annotated[int, Strict(), _between(0, 65535)] = 100
    tags: list[Tag] = Field(default_factory=list)
    upstream: Str | None = None  # only on top-level targets

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream_ref(cls, v: Any) -> Any:
        return _reference("upstream")(v)

    @field_validator("tags", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @property
    def host(self) -> str:
        return parse_host_port(self.target)[1]

    @property
    def port(self) -> int:
        port = parse_host_port(self.target)[2]
        return TARGET_DEFAULT_PORT if port is None else port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


SUPPORTED_ALGORITHMS = ("round-robin", "consistent-hashing", "least-connections", "latency")


def _check_algorithm(v: str) -> str:
    if v in SUPPORTED_ALGORITHMS:
        return v
    if v in KONG_ALGORITHMS:
        raise _unsupported(f"algorithm '{v}'")
    raise _err("enum", "invalid algorithm '{value}': expected one of {expected}", value=v,
               expected=", ".join(KONG_ALGORITHMS))


def _check_hash_on(v: str) -> str:
    if v in KONG_HASH_ON:
        return v
    raise _err("enum", "invalid value '{value}': expected one of {expected}", value=v, expected=", ".join(KONG_HASH_ON))


HashOn = Annotated[str, Strict(), AfterValidator(_check_hash_on)]
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 7230 token (Kong: utils.validate_cookie_name)


def _check_cookie_name(v: str) -> str:
    if not _COOKIE_NAME.fullmatch(v):
        raise _err("cookie_name", "invalid cookie name '{value}': must be an HTTP token", value=v)
    return v


def _nonempty(v: str) -> str:
    if not v:
        raise _err("empty", "must not be empty")
    return v


HeaderName = Annotated[str, Strict(), AfterValidator(_check_header_name)]
_HASH_NAMES = {"header": "header", "query_arg": "query_arg", "uri_capture": "uri_capture"}


def _hash_checks(data: dict[str, Any]) -> dict[str, str]:
    """Kong's upstream entity checks on the hash fields: {field: message} for each field in error."""
    out: dict[str, str] = {}
    on, fb = data.get("hash_on", "none"), data.get("hash_fallback", "none")
    if not isinstance(on, str) or not isinstance(fb, str):
        return out
    for kind, field in (("header", "header"), ("query_arg", "query_arg"), ("uri_capture", "uri_capture")):
        if on == kind and data.get(f"hash_on_{field}") is None:
            out[f"hash_on_{field}"] = f"field 'hash_on_{field}' is required when hash_on is '{kind}'"
        if fb == kind and data.get(f"hash_fallback_{field}") is None:
            out[f"hash_fallback_{field}"] = f"field 'hash_fallback_{field}' is required when hash_fallback is '{kind}'"
        a, b = data.get(f"hash_on_{field}"), data.get(f"hash_fallback_{field}")
        if on == kind and fb == kind and isinstance(a, str) and isinstance(b, str):
            if (a.lower() == b.lower()) if kind == "header" else (a == b):
                out[f"hash_fallback_{field}"] = f"must differ from hash_on_{field} ('{a}')"
    if "cookie" in (on, fb) and data.get("hash_on_cookie") is None:
        which = "hash_on" if on == "cookie" else "hash_fallback"
        out["hash_on_cookie"] = f"field 'hash_on_cookie' is required when {which} is 'cookie'"
    if fb != "none":
        if on == "none":
            out["hash_fallback"] = f"must be 'none' when hash_on is 'none', got '{fb}'"
        elif on == "cookie":
            out["hash_fallback"] = f"must be 'none' when hash_on is 'cookie' (a cookie is always there: the gateway sets it), got '{fb}'"
        elif fb == on and on not in _HASH_NAMES:
            out["hash_fallback"] = f"must differ from hash_on ('{on}')"
    return out


class UpstreamConfig(_Entity):
    """A Kong upstream: a named, load-balanced set of targets. A service uses it by setting ``host`` to its name."""

    _kind: ClassVar[str] = "upstream"

    id: Id | None = None
    name: Annotated[str, Strict(), AfterValidator(_check_upstream_name)]
    tags: list[Tag] = Field(default_factory=list)
    algorithm: Annotated[str, Strict(), AfterValidator(_check_algorithm)] = "round-robin"
    slots: Annotated[int, Strict(), _between(10, 2**16)] = 10000
    hash_on: HashOn = "none"
    hash_fallback: HashOn = "none"
    hash_on_header: HeaderName | None = None
    hash_fallback_header: HeaderName | None = None
    hash_on_cookie: Annotated[str, Strict(), AfterValidator(_check_cookie_name)] | None = None
    hash_on_cookie_path: ServicePath = "/"
    hash_on_query_arg: Annotated[str, Strict(), AfterValidator(_nonempty)] | None = None
    hash_fallback_query_arg: Annotated[str, Strict(), AfterValidator(_nonempty)] | None = None
    hash_on_uri_capture: Annotated[str, Strict(), AfterValidator(_nonempty)] | None = None
    hash_fallback_uri_capture: Annotated[str, Strict(), AfterValidator(_nonempty)] | None = None
    host_header: Annotated[str, Strict(), AfterValidator(_check_host_with_optional_port)] | None = None
    healthchecks: HealthchecksConfig = Field(default_factory=HealthchecksConfig)
    client_certificate: Str | None = None  # certificate id: Kong's fallback for https services without their own
    targets: list[TargetConfig] = Field(default_factory=list)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("healthchecks", 0) is None:
            data = {k: v for k, v in data.items() if k != "healthchecks"}
        if "targets" in data:
            data = {
                **data,
                "targets": _mark_refs(
                    data["targets"], "upstream", must_have=False,
                    message="a target nested under an upstream must not set 'upstream'",
                ),
            }
        problems = _hash_checks(data)  # reported at the field's own location (see _Sentinel)
        if problems:
            data = {**data, **{k: _Sentinel(m) for k, m in problems.items()}}
        return data

    @field_validator("hash_on", "hash_fallback", "hash_on_header", "hash_fallback_header", "hash_on_cookie",
                     "hash_on_query_arg", "hash_fallback_query_arg", "hash_on_uri_capture",
                     "hash_fallback_uri_capture", mode="before")
    @classmethod
    def _hash_sentinels(cls, v: Any) -> Any:
        return _reject_sentinel(v)

    @field_validator("hash_on_cookie_path", mode="before")
    @classmethod
    def _default_cookie_path(cls, v: Any) -> Any:
        return "/" if v is None else v

    @field_validator("tags", "targets", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("client_certificate", mode="before")
    @classmethod
    def _certificate_ref(cls, v: Any) -> Any:
        return _reference("certificate")(v)


# --------------------------------------------------------------------------------------------------------------
# Certificates, SNIs, CA certificates (TLS; see gwanmun/tls.py)
# --------------------------------------------------------------------------------------------------------------

SniName = Annotated[str, Strict(), AfterValidator(_check_sni_name)]
PemCertificate = Annotated[str, Strict(), AfterValidator(_check_pem_certificate)]
PemKey = Annotated[str, Strict(), AfterValidator(_check_pem_key)]


class SniConfig(_Entity):
    """A Kong SNI: a server name whose TLS handshakes are served with a certificate. Nested under its certificate
    (``snis: [name, ...]`` or ``[{name: ...}]``), or top-level with ``certificate: {id: ...}``."""

    _kind: ClassVar[str] = "sni"

    id: Id | None = None
    name: SniName
    tags: list[Tag] = Field(default_factory=list)
    certificate: Str | None = None  # only on top-level snis: the certificate's id

    @field_validator("certificate", mode="before")
    @classmethod
    def _certificate_ref(cls, v: Any) -> Any:
        return _reference("certificate")(v)

    @field_validator("tags", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v


class CertificateConfig(_Entity):
    """A Kong certificate: a PEM certificate (a leaf, optionally followed by its chain) and its private key, plus an
    optional alternate pair of another key type (``cert_alt``/``key_alt``, e.g. ECDSA beside RSA). Key material is
    kept out of ``repr``. Cross-field checks (key matches certificate, ...) are in ``gwanmun.config.load``."""

    _kind: ClassVar[str] = "certificate"

    id: Id | None = None
    cert: PemCertificate
    key: PemKey = Field(repr=False)
    cert_alt: PemCertificate | None = None
    key_alt: PemKey | None = Field(default=None, repr=False)
    tags: list[Tag] = Field(default_factory=list)
    snis: list[SniConfig] = Field(default_factory=list)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        snis = data.get("snis")
        if isinstance(snis, list):
            snis = [{"name": s} if isinstance(s, str) else s for s in snis]  # the Admin API's shorthand
            data = {**data, "snis": _mark_refs(
                snis, "certificate", must_have=False,
                message="an SNI nested under a certificate must not set 'certificate'",
            )}
        return data

    @field_validator("tags", "snis", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v


class CACertificateConfig(_Entity):
    """A Kong CA certificate: one CA that services with ``tls_verify`` trust (``ca_certificates: [id, ...]``)."""

    _kind: ClassVar[str] = "ca_certificate"

    id: Id | None = None
    cert: Annotated[str, Strict(), AfterValidator(_check_pem_certificate), AfterValidator(_check_ca_certificate)]
    cert_digest: Str | None = None  # Kong computes it (sha256 of the DER, hex); checked when given
    tags: list[Tag] = Field(default_factory=list)

    @field_validator("tags", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v


# --------------------------------------------------------------------------------------------------------------
# gateway: (gwanmun's own server settings; Kong keeps these in kong.conf)
# --------------------------------------------------------------------------------------------------------------


# kong.conf proxy_listen flags; gwanmun implements ``ssl``.
KONG_LISTEN_FLAGS = ("ssl", "http2", "proxy_protocol", "deferred", "bind", "reuseport", "backlog", "ipv6only",
                     "so_keepalive")


class _ListenFlags(Exception):
    pass


def _listen_flags(v: str) -> tuple[str, bool]:
    """``'0.0.0.0:8443 ssl'`` -> ('0.0.0.0:8443', True). Raises ``_ListenFlags`` (unsupported) or ValueError."""
    parts = v.split()
    tls = False
    for flag in parts[1:]:
        name = flag.split("=", 1)[0]
        if flag == "ssl":
            tls = True
        elif name in KONG_LISTEN_FLAGS:
            raise _ListenFlags(flag)
        else:
            raise ValueError(f"unknown flag '{flag}' (Kong's proxy_listen flags: {', '.join(KONG_LISTEN_FLAGS)})")
    return (parts[0] if parts else ""), tls


def _parse_listen(v: str) -> tuple[str, int]:
    if not v or v != v.strip():
        raise ValueError("expected host:port")
    if " " in v or "\t" in v:
        v = _listen_flags(v)[0]
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or not v[end + 1 :].startswith(":"):
            raise ValueError("expected [ipv6]:port")
        host, port_s = v[1:end], v[end + 2 :]
        ipaddress.IPv6Address(host)
    else:
        if v.count(":") != 1:
            raise ValueError("expected host:port (write IPv6 addresses as [::]:8000)")
        host, port_s = v.split(":")
        if host not in ("", "*"):
            parse_host_port(host)
    if not port_s.isdigit() or int(port_s) > 65535:
        raise ValueError("invalid port")
    return (host if host not in ("", "*") else "0.0.0.0"), int(port_s)


def _check_listen(v: str) -> str:
    try:
        _parse_listen(v)
    except _ListenFlags as e:
        raise _err("unsupported", "listen flag '{flag}' is not supported by gwanmun yet (only 'ssl' is)",
                   flag=str(e)) from None
    except ValueError as e:
        raise _err("listen", "invalid listen address '{value}': {reason}", value=v, reason=str(e)) from None
    return v


def _check_ip_or_cidr(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise _err("ip", "invalid IP address or CIDR range '{value}'", value=v) from None
    return v


def _check_nameserver(v: str) -> str:
    try:
        kind, _, _ = parse_host_port(v)
    except ValueError:
        kind = "bad"
    if kind not in ("ipv4", "ipv6"):
        raise _err("nameserver", "invalid DNS resolver '{value}': expected ip, ip:port or [ipv6]:port", value=v)
    return v


def _check_access_log(v: str) -> str:
    if not v.strip():
        raise _err("access_log", "must be 'stdout', 'stderr', 'off' or a file path")
    return v


def _read_ssl_file(v: str) -> str:
    """kong.conf's ``ssl_cert``/``ssl_cert_key`` value: the PEM text itself, or a file path."""
    if "-----BEGIN" in v:
        return v
    with open(v, encoding="utf-8") as f:
        return f.read()


def _check_ssl_file(v: str) -> str:
    if "-----BEGIN" in v:
        return v
    try:
        _read_ssl_file(v)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise _err("ssl_file", "cannot read '{path}': {reason}", path=v, reason=reason) from None
    return v


def _check_cipher_suite(v: str) -> str:
    if v in ("modern", "intermediate", "custom"):
        return v
    if v in ("old", "fips"):
        raise _unsupported(f"ssl_cipher_suite '{v}' (TLS 1.2 is the minimum)")
    raise _err("enum", "invalid ssl_cipher_suite '{value}': expected modern, intermediate or custom", value=v)


def _check_ssl_protocols(v: str) -> str:
    names = v.split()
    if not names:
        raise _err("ssl_protocols", "must list at least one of TLSv1.2, TLSv1.3")
    for name in names:
        if name in ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1"):
            raise _err("ssl_protocols", "{name} is not offered by gwanmun: TLS 1.2 is the minimum", name=name)
        if name not in ("TLSv1.2", "TLSv1.3"):
            raise _err("ssl_protocols", "unknown protocol '{name}': expected TLSv1.2 and/or TLSv1.3", name=name)
    return v


def _check_ssl_ciphers(v: str) -> str:
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
    except ssl.SSLError:
        raise _err("ssl_ciphers", "no cipher in '{value}' is known to OpenSSL", value=v) from None
    return v


PositiveInt = Annotated[int, Strict(), _between(1, 2**31 - 1)]


MAX_WORKERS = 1024


def _check_workers(v: Any) -> int | str:
    if isinstance(v, str) and v == "auto":
        return v
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WORKERS:
        return v
    shown = f"'{v}'" if isinstance(v, str) else "a boolean" if isinstance(v, bool) else str(v)
    raise _err("workers", "expected a number of worker processes from 1 to {max} or 'auto', got {value}",
               max=MAX_WORKERS, value=shown)


def _check_pid_file(v: str) -> str:
    if not v.strip():
        raise _err("pid_file", "must be a file path or 'off'")
    return v


def _check_watch_interval(v: float) -> float:
    if 0 < v < 0.1:
        raise _err("out_of_range", "must be 0 (do not watch) or at least 0.1 seconds, got {value}", value=v)
    return v
NonNegativeSeconds = Annotated[float, Strict(), AllowInfNan(False), _at_least(0)]


class PassportKeyConfig(_Model):
    kid: Annotated[str, Strict(), Field(min_length=1, max_length=128)]
    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    private_key: Annotated[str, Strict()] = Field(repr=False)  # PEM (PKCS#8); use ${ENV} interpolation


class PassportSettings(_Model):
    """``gateway.passport``: the gateway's signing keys for passports (docs/passport.md). The first key signs; the
    others are only published, for rotation. The JWKS is served on the proxy listeners at ``jwks_path``."""

    issuer: Annotated[str, Strict(), Field(min_length=1)] = "gwanmun"
    keys: list[PassportKeyConfig] = Field(min_length=1)
    jwks_path: Annotated[str, Strict(), Field(pattern=r"^/[!-~]*$")] | None = "/.well-known/gwanmun/jwks.json"

    @model_validator(mode="after")
    def _keys_load(self) -> PassportSettings:
        from ..passport import PassportError, PassportSigner

        try:
            PassportSigner([k.model_dump() for k in self.keys], issuer=self.issuer)
        except (ValueError, PassportError) as e:
            raise _err("passport_key", "{reason}", reason=str(e)) from None
        return self


# ---- gateway.admin: the Admin API and where its config is stored (gwanmun/admin, gwanmun/store; docs/admin.md) --


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost could resolve anywhere


def _check_admin_listen(v: str) -> str:
    _check_listen(v)
    if len(v.split()) > 1:
        raise _err("unsupported", "listen flags are not supported on the admin listener (put TLS in front of it)")
    return v


class AdminTokenConfig(_Model):
    """One Admin API token, stored hashed (``gwanmun hash-key``): a client sends the token itself in
    ``Authorization: Bearer <token>`` or ``Kong-Admin-Token``."""

    name: Annotated[str, Strict(), Field(min_length=1, max_length=128)]
    token_hash: Annotated[str, Strict(), Field(pattern=r"^(sha256|hmac-sha256)\$[0-9a-f]{64}$")] = Field(repr=False)
    role: Literal["admin", "read-only"] = "admin"


class AdminSettings(_Model):
    """``gateway.admin``: serve the Admin API (Kong's paths) and keep the config in a store. Absent: no Admin API,
    the config file is the only source (as before)."""

    listen: list[Annotated[str, Strict(), AfterValidator(_check_admin_listen)]] = Field(
        default_factory=lambda: ["127.0.0.1:8001"], min_length=1
    )
    tokens: list[AdminTokenConfig] = Field(default_factory=list)
    # off: DB-less (the config file; the API is read-only except POST /config); sqlite: one node (the default);
    # postgres: a cluster of nodes sharing one database
    database: Literal["off", "sqlite", "postgres"] = "sqlite"
    sqlite_path: Annotated[str, Strict(), Field(min_length=1)] | None = None  # default: <config>.sqlite3
    postgres_dsn: Annotated[str, Strict(), Field(min_length=1)] | None = Field(default=None, repr=False)
    cache_file: Annotated[str, Strict(), Field(min_length=1)] | None = None  # default: <config>.lkg.json
    poll_interval: Annotated[float, Strict(), AllowInfNan(False), _between(0.05, 3600)] = 0.5  # seconds
    connect_timeout: Annotated[float, Strict(), AllowInfNan(False), _between(0.1, 600)] = 2.0  # seconds
    history_limit: Annotated[int, Strict(), _between(0, 2**31 - 1)] = 1000  # versions kept; 0: all

    @field_validator("database", mode="before")
    @classmethod
    def _database_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare ``off`` as false

    @model_validator(mode="after")
    def _checks(self) -> AdminSettings:
        if self.database == "postgres" and not self.postgres_dsn:
            raise _err("postgres_dsn", "database 'postgres' needs postgres_dsn (e.g. postgresql://user@host/db)")
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise _err("tokens", "admin token names must be unique")
        if not self.tokens:
            for v in self.listen:
                host, _ = _parse_listen(v)
                if not _is_loopback_host(host):
                    raise _err("admin_auth", "the admin listener '{value}' is not a loopback address: configure "
                                             "admin authentication (gateway.admin.tokens) first", value=v)
        return self


# ---- observability: status listener, access-log format and rotation, redaction, tracing (docs/observability.md) ----


def _check_status_listen(v: str) -> str:
    if v == "off":
        return v
    _check_listen(v)
    if len(v.split()) > 1:
        raise _err("unsupported", "listen flags are not supported on the status listener")
    return v


def _check_log_format(v: str) -> str:
    from ..observability.logformat import check_format

    try:
        return check_format(v)
    except ValueError as e:
        raise _err("access_log_format", "{reason}", reason=str(e)) from None


def _check_log_fields(v: list[str]) -> list[str]:
    from ..observability.logformat import check_fields

    try:
        return check_fields(v)
    except ValueError as e:
        raise _err("access_log_fields", "{reason}", reason=str(e)) from None


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _parse_size(v: Any) -> Any:
    """nginx-style sizes: 1048576, "512k", "100m", "1g"."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", v)
        if not m:
            raise _err("size", "expected a size in bytes, or with a unit: 512k, 100m, 1g")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    return v


class AccessLogRotate(_Model):
    """``gateway.access_log_rotate``: rotate the access-log file when it reaches ``max_size``."""

    max_size: Annotated[int, PlainValidator(_parse_size), AfterValidator(lambda v: _size_at_least(v))]
    keep: Annotated[int, Strict(), _between(1, 1000)] = 5  # rotated files kept: <file>.1 ... <file>.<keep>


def _size_at_least(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 4096:
        raise _err("size", "max_size must be at least 4096 bytes")
    return v


class LogRedactSettings(_Model):
    """``gateway.log_redact``: what is never written to a log as it was sent (replaced by ``[REDACTED]``)."""

    headers: list[Annotated[str, Strict(), Field(min_length=1)]] = Field(
        default_factory=lambda: ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                                 "apikey", "api-key", "x-auth-token", "x-access-token", "x-amz-security-token"])
    query_args: list[Annotated[str, Strict(), Field(min_length=1)]] = Field(
        default_factory=lambda: ["apikey", "api_key", "api-key", "key", "token", "access_token", "refresh_token",
                                 "id_token", "password", "passwd", "secret", "client_secret", "signature", "sig",
                                 "jwt", "auth"])


def _check_otlp_endpoint(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _err("endpoint", "expected an OTLP/HTTP URL such as http://127.0.0.1:4318/v1/traces")
    return v


class TracingSettings(_Model):
    """``gateway.tracing``: OpenTelemetry traces exported over OTLP/HTTP (protobuf). Absent: tracing is off."""

    endpoint: Annotated[str, Strict(), AfterValidator(_check_otlp_endpoint)]
    sampling_ratio: Annotated[float, AllowInfNan(False), _between(0, 1)] = 0.01  # Kong's tracing_sampling_rate
    parent_based: Bool = True  # follow a client's traceparent sampled flag
    service_name: Annotated[str, Strict(), Field(min_length=1)] = "gwanmun"
    headers: dict[str, Annotated[str, Strict()]] = Field(default_factory=dict, repr=False)  # e.g. collector auth
    resource_attributes: dict[str, Annotated[str, Strict()]] = Field(default_factory=dict)
    timeout: Annotated[float, AllowInfNan(False), _between(0.1, 600)] = 10.0  # seconds per export
    flush_interval: Annotated[float, AllowInfNan(False), _between(0.01, 600)] = 5.0  # seconds between exports
    max_queue_size: Annotated[int, Strict(), _between(1, 1_000_000)] = 2048  # spans buffered; more are dropped


class GatewayConfig(_Entity):
    """gwanmun's server settings (``gateway:``). Names follow kong.conf where an equivalent exists."""

    _kind: ClassVar[str] = "gateway"

    passport: PassportSettings | None = None  # passport signing keys (docs/passport.md)

    listen: list[Annotated[str, Strict(), AfterValidator(_check_listen)]] = Field(
        default_factory=lambda: ["0.0.0.0:8000"], min_length=1
    )
    trusted_ips: list[Annotated[str, Strict(), AfterValidator(_check_ip_or_cidr)]] = Field(default_factory=list)
    access_log: Annotated[str, Strict(), AfterValidator(_check_access_log)] = "stdout"

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log_off(cls, v):
        # YAML 1.1 reads a bare ``off`` as false; ``access_log: off`` is what an nginx user writes.
        return "off" if v is False else v

    # HTTPS listeners (``listen: ["0.0.0.0:8443 ssl"]``); see gwanmun/tls.py. kong.conf names.
    ssl_cert: list[Annotated[str, Strict(), AfterValidator(_check_ssl_file)]] = Field(default_factory=list)
    ssl_cert_key: list[Annotated[str, Strict(), AfterValidator(_check_ssl_file)]] = Field(
        default_factory=list, repr=False
    )
    ssl_cipher_suite: Annotated[str, Strict(), AfterValidator(_check_cipher_suite)] = "intermediate"
    ssl_protocols: Annotated[str, Strict(), AfterValidator(_check_ssl_protocols)] = "TLSv1.2 TLSv1.3"
    ssl_ciphers: Annotated[str, Strict(), AfterValidator(_check_ssl_ciphers)] | None = None

    @field_validator("ssl_cert", "ssl_cert_key", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [] if v is None else [v] if isinstance(v, str) else v

    request_id_header: HeaderName = "X-Request-ID"
    via_header: Bool = True
    max_request_line: PositiveInt = 8192
    max_header_size: PositiveInt = 61440
    max_headers: PositiveInt = 100
    # Request hardening (gwanmun/http/normalize.py, gwanmun/http/validate.py; README "Request hardening").
    underscores_in_headers: Bool = False  # nginx's default: fields with '_' in their name are dropped
    merge_slashes: Bool = True  # nginx's default, and Kong's router: '//a' is '/a'
    escaped_slashes: Literal["keep", "reject"] = "keep"  # '%2F'/'%5C' in a path (Envoy: KEEP_UNCHANGED)
    keepalive_timeout: NonNegativeSeconds = 75.0
    # Edge limits, nginx's defaults (0 disables): a head must arrive within client_header_timeout (else 408 and
    # close: slowloris), and a body may pause at most client_body_timeout between reads.
    client_header_timeout: NonNegativeSeconds = 60.0
    client_body_timeout: NonNegativeSeconds = 60.0
    max_connections: Annotated[int, Strict(), _between(0, 2**31 - 1)] = 16384  # per worker; 0: no cap
    upstream_keepalive_pool_size: Annotated[int, Strict(), _between(0, 2**31 - 1)] = 512
    upstream_keepalive_max_requests: Annotated[int, Strict(), _between(0, 2**31 - 1)] = 10000
    upstream_keepalive_idle_timeout: NonNegativeSeconds = 60.0
    dns_hostsfile: Str = "/etc/hosts"
    dns_resolver: list[Annotated[str, Strict(), AfterValidator(_check_nameserver)]] = Field(default_factory=list)
    dns_stale_ttl: NonNegativeSeconds = 3600.0
    dns_not_found_ttl: NonNegativeSeconds = 30.0
    dns_error_ttl: NonNegativeSeconds = 1.0
    dns_valid_ttl: NonNegativeSeconds | None = None
    # The process model (gwanmun.process); docs/config.md says which of these a reload applies.
    workers: Annotated[int | Literal["auto"], PlainValidator(_check_workers)] = "auto"
    shutdown_timeout: NonNegativeSeconds = 10.0
    pid_file: Annotated[str, Strict(), AfterValidator(_check_pid_file)] | None = None
    config_watch_interval: Annotated[NonNegativeSeconds, AfterValidator(_check_watch_interval)] = 1.0
    admin: AdminSettings | None = None  # the Admin API and the config store (docs/admin.md); unset: none
    # observability (docs/observability.md): Kong's status_listen (/metrics, /status, the dashboard; "off": none),
    # the access-log format and rotation, what logs never show, and OpenTelemetry tracing (absent: off)
    status_listen: Annotated[str, Strict(), AfterValidator(_check_status_listen)] = "127.0.0.1:8100"
    access_log_format: Annotated[str, Strict(), AfterValidator(_check_log_format)] = "json"
    access_log_fields: Annotated[list[Annotated[str, Strict()]], AfterValidator(_check_log_fields)] | None = None
    access_log_rotate: AccessLogRotate | None = None
    log_redact: LogRedactSettings = Field(default_factory=LogRedactSettings)
    tracing: TracingSettings | None = None

    @field_validator("pid_file", "status_listen", mode="before")
    @classmethod
    def _pid_file_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare ``off`` as false

    @field_validator("trusted_ips", "dns_resolver", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @model_validator(mode="after")
    def _head_limits(self) -> GatewayConfig:
        if self.max_header_size < self.max_request_line:
            raise _err(
                "limits",
                "max_header_size ({size}) must be at least max_request_line ({line}): it bounds the whole "
                "request head, request line included",
                size=self.max_header_size, line=self.max_request_line,
            )
        return self

    def listen_addresses(self) -> list[tuple[str, int]]:
        """``listen`` parsed into (host, port); '*' and an empty host mean 0.0.0.0; IPv6 without brackets."""
        return [_parse_listen(v) for v in self.listen]

    def listeners(self) -> list[tuple[str, int, bool]]:
        """``listen`` parsed into (host, port, tls): ``tls`` is True for an entry with Kong's ``ssl`` flag."""
        return [(*_parse_listen(v), _listen_flags(v)[1]) for v in self.listen]

    @model_validator(mode="after")
    def _tls_settings(self) -> GatewayConfig:
        if len(self.ssl_cert) != len(self.ssl_cert_key):
            raise _err("ssl_cert", "ssl_cert and ssl_cert_key must list as many entries ({certs} and {keys})",
                       certs=len(self.ssl_cert), keys=len(self.ssl_cert_key))
        if self.ssl_cipher_suite == "custom" and not self.ssl_ciphers:
            raise _err("ssl_ciphers", "ssl_cipher_suite 'custom' needs ssl_ciphers")
        if self.ssl_ciphers and self.ssl_cipher_suite != "custom":
            raise _err("ssl_ciphers", "ssl_ciphers is only used with ssl_cipher_suite: custom (the suite "
                                      "'{suite}' has its own list)", suite=self.ssl_cipher_suite)
        if self.ssl_cipher_suite == "modern" and "TLSv1.3" not in self.ssl_protocols.split():
            raise _err("ssl_protocols", "ssl_cipher_suite 'modern' is TLS 1.3 only, but ssl_protocols does not list "
                                        "TLSv1.3")
        from ..tls import PemError, cert_key_problems, key_type, load_pem_certificates, load_pem_key

        keys = set()
        for i, (cert_file, key_file) in enumerate(zip(self.ssl_cert, self.ssl_cert_key)):
            cert, key = _read_ssl_file(cert_file), _read_ssl_file(key_file)
            try:
                load_pem_certificates(cert)
                keys.add(key_type(load_pem_key(key)))
            except PemError as e:
                raise _err("ssl_cert", "ssl_cert[{i}]/ssl_cert_key[{i}]: {reason}", i=i, reason=str(e)) from None
            problem = cert_key_problems(cert, key)
            if problem:
                raise _err("ssl_cert", "ssl_cert[{i}] and ssl_cert_key[{i}]: {reason}", i=i, reason=problem)
        if len(keys) < len(self.ssl_cert):
            raise _err("ssl_cert", "each ssl_cert must have a different key type (e.g. RSA and ECDSA)")
        return self

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(v, strict=False) for v in self.trusted_ips]


# --------------------------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------------------------


def _check_format_version(v: str) -> str:
    if re.fullmatch(r"3\.\d+", v):
        return v
    if v in ("1.1", "2.1"):
        raise _err(
            "format_version",
            "format version '{value}' is not supported: gwanmun reads Kong 3.x files ('3.0'); upgrade the file "
            "with 'deck file convert --from kong-gateway-2.x --to kong-gateway-3.x'",
            value=v,
        )
    raise _err("format_version", "invalid format version '{value}': expected '3.0'", value=v)


# --------------------------------------------------------------------------------------------------------------
# Plugins, consumers and their credentials
# --------------------------------------------------------------------------------------------------------------

_PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


def _check_plugin_name(v: str) -> str:
    if not _PLUGIN_NAME.match(v):
        raise _err("plugin_name", "invalid plugin name '{value}': lower-case letters, digits and '-'", value=v)
    return v


class PluginEntityConfig(_Entity):
    """A Kong plugin entity: ``name``, its ``config`` (checked against the plugin's own schema in
    ``gwanmun.config.load``, with errors under ``...config.<field>``), and at most one each of ``service``, ``route``
    and ``consumer`` on top-level plugins (nested ones take their parent's)."""

    _kind: ClassVar[str] = "plugin"

    id: Id | None = None
    name: Annotated[str, Strict(), AfterValidator(_check_plugin_name)]
    instance_name: Name | None = None
    enabled: Bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    protocols: list[Annotated[str, Strict()]] = Field(default_factory=lambda: ["grpc", "grpcs", "http", "https"])
    tags: list[Tag] = Field(default_factory=list)
    service: Str | None = None
    route: Str | None = None
    consumer: Str | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _nullable_config(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("tags", "protocols", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("service", "route", "consumer", mode="before")
    @classmethod
    def _refs(cls, v: Any, info) -> Any:
        return _reference(info.field_name)(v)


class _Credential(_Entity):
    """What every consumer credential has: an id, tags, and (top-level only) the ``consumer`` it belongs to."""

    id: Id | None = None
    tags: list[Tag] = Field(default_factory=list)
    consumer: Str | None = None

    @field_validator("consumer", mode="before")
    @classmethod
    def _consumer_ref(cls, v: Any) -> Any:
        return _reference("consumer")(v)


class KeyauthCredentialConfig(_Credential):
    """A key for ``key-auth``: the key itself (``key``), or only its hash (``key_hash``, ``sha256$<hex>`` as
    ``gwanmun hash-key`` prints it), so the config need not hold the key."""

    _kind: ClassVar[str] = "keyauth_credential"

    key: Annotated[str, Strict(), Field(min_length=1)] | None = None
    key_hash: Annotated[str, Strict(), Field(pattern=r"^(sha256|hmac-sha256)\$[0-9a-f]{64}$")] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> KeyauthCredentialConfig:
        if (self.key is None) == (self.key_hash is None):
            raise _err("key", "set exactly one of 'key' and 'key_hash'")
        return self


def _check_password_hash(v: str) -> str:
    if not v.startswith(("$2a$", "$2b$", "$2y$", "$argon2id$", "$argon2i$", "$argon2d$")):
        raise _err("password", "must be a bcrypt or argon2 hash, never the password itself (make one with "
                               "'gwanmun hash-password')")
    return v


class BasicauthCredentialConfig(_Credential):
    _kind: ClassVar[str] = "basicauth_credential"

    username: Annotated[str, Strict(), Field(min_length=1)]
    password: Annotated[str, Strict(), AfterValidator(_check_password_hash)] = Field(repr=False)


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                  "ES512", "EdDSA")


class JwtSecretConfig(_Credential):
    """A ``jwt`` credential (Kong's fields): tokens whose ``key_claim_name`` claim equals ``key`` are checked with
    ``secret`` (HS*) or ``rsa_public_key`` (a PEM public key, for every asymmetric algorithm, as Kong names it)."""

    _kind: ClassVar[str] = "jwt_secret"

    key: Annotated[str, Strict(), Field(min_length=1)]
    algorithm: Literal[JWT_ALGORITHMS] = "HS256"  # type: ignore[valid-type]
    secret: Annotated[str, Strict(), Field(min_length=1)] | None = Field(default=None, repr=False)
    rsa_public_key: Str | None = None

    @model_validator(mode="after")
    def _key_material(self) -> JwtSecretConfig:
        if self.algorithm.startswith("HS"):
            if self.secret is None:
                raise _err("secret", "'secret' is required for algorithm {alg}", alg=self.algorithm)
        elif self.rsa_public_key is None:
            raise _err("rsa_public_key", "'rsa_public_key' (a PEM public key) is required for algorithm {alg}",
                       alg=self.algorithm)
        return self


class AclConfig(_Credential):
    _kind: ClassVar[str] = "acl"

    group: Annotated[str, Strict(), Field(min_length=1)]


class ConsumerGroupConfig(_Entity):
    _kind: ClassVar[str] = "consumer_group"

    id: Id | None = None
    name: Name
    tags: list[Tag] = Field(default_factory=list)


class ConsumerConfig(_Entity):
    """A Kong consumer, with its credentials nested (or top-level with ``consumer: <ref>``) and its consumer groups
    (``groups: [name, ...]`` or decK's ``[{name: ...}]``). At least one of ``username`` and ``custom_id``."""

    _kind: ClassVar[str] = "consumer"

    id: Id | None = None
    username: Annotated[str, Strict(), Field(min_length=1)] | None = None
    custom_id: Annotated[str, Strict(), Field(min_length=1)] | None = None
    tags: list[Tag] = Field(default_factory=list)
    groups: list[Str] = Field(default_factory=list)
    keyauth_credentials: list[KeyauthCredentialConfig] = Field(default_factory=list)
    basicauth_credentials: list[BasicauthCredentialConfig] = Field(default_factory=list)
    jwt_secrets: list[JwtSecretConfig] = Field(default_factory=list)
    acls: list[AclConfig] = Field(default_factory=list)
    plugins: list[PluginEntityConfig] = Field(default_factory=list)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        for key in ("keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls", "plugins"):
            if key in data:
                data[key] = _mark_refs(data[key], "consumer", must_have=False,
                                       message="an entity nested under a consumer must not set 'consumer'")
        if isinstance(data.get("groups"), list):
            data["groups"] = [_reference("consumer group")(g) if isinstance(g, dict) else g for g in data["groups"]]
        return data

    @field_validator("tags", "groups", "keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls",
                     "plugins", mode="before")
    @classmethod
    def _nullable_list(cls, v: Any) -> Any:
        return [] if v is None else v

    @model_validator(mode="after")
    def _has_name(self) -> ConsumerConfig:
        if self.username is None and self.custom_id is None:
            raise _err("consumer_name", "a consumer needs at least one of 'username' and 'custom_id'")
        return self

    @property
    def label(self) -> str:
        return self.username or self.custom_id or self.id or "?"



class DeclarativeConfig(_Entity):
    """A whole declarative config file (Kong 3.x format plus ``gateway:``)."""

    _kind: ClassVar[str] = "root"

    format_version: Annotated[str, Strict(), AfterValidator(_check_format_version)] = Field(alias="_format_version")
    transform: Bool = Field(default=True, alias="_transform")
    services: list[ServiceConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    targets: list[TargetConfig] = Field(default_factory=list)
    certificates: list[CertificateConfig] = Field(default_factory=list)
    snis: list[SniConfig] = Field(default_factory=list)
    ca_certificates: list[CACertificateConfig] = Field(default_factory=list)
    consumers: list[ConsumerConfig] = Field(default_factory=list)
    consumer_groups: list[ConsumerGroupConfig] = Field(default_factory=list)
    plugins: list[PluginEntityConfig] = Field(default_factory=list)
    keyauth_credentials: list[KeyauthCredentialConfig] = Field(default_factory=list)
    basicauth_credentials: list[BasicauthCredentialConfig] = Field(default_factory=list)
    jwt_secrets: list[JwtSecretConfig] = Field(default_factory=list)
    acls: list[AclConfig] = Field(default_factory=list)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        fv = data.get("_format_version")
        if isinstance(fv, float) and not isinstance(fv, bool):  # `_format_version: 3.0` unquoted
            data["_format_version"] = repr(fv)
        if data.get("gateway", 0) is None:
            del data["gateway"]
        for key in ("services", "routes", "upstreams", "targets", "certificates", "snis", "ca_certificates",
                    "consumers", "consumer_groups", "plugins", "keyauth_credentials", "basicauth_credentials",
                    "jwt_secrets", "acls"):
            if key in data and data[key] is None:
                data[key] = []
        for key in ("keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls"):
            if key in data:
                data[key] = _mark_refs(data[key], "consumer", must_have=True,
                                       message="field 'consumer' is required for a top-level credential (or nest it "
                                               "under its consumer)")
        if "routes" in data:
            data["routes"] = _mark_refs(
                data["routes"], "service", must_have=True,
                message="field 'service' is required for a top-level route (or nest the route under its service)",
            )
        if "targets" in data:
            data["targets"] = _mark_refs(
                data["targets"], "upstream", must_have=True,
                message="field 'upstream' is required for a top-level target (or nest it under its upstream)",
            )
        if "snis" in data:
            data["snis"] = _mark_refs(
                data["snis"], "certificate", must_have=True,
                message="field 'certificate' is required for a top-level SNI (or nest it under its certificate)",
            )
        return data

    # ---- lookups (names first, then ids, as Kong resolves references) ------------------------------------------

    @cached_property
    def _services_by_key(self) -> dict[str, ServiceConfig]:
        out: dict[str, ServiceConfig] = {}
        for s in self.services:
            if s.id is not None:
                out.setdefault(s.id, s)
        for s in self.services:
            if s.name is not None:
                out[s.name] = s
        return out

    @cached_property
    def _upstreams_by_key(self) -> dict[str, UpstreamConfig]:
        out: dict[str, UpstreamConfig] = {}
        for u in self.upstreams:
            if u.id is not None:
                out.setdefault(u.id, u)
        for u in self.upstreams:
            out[u.name] = u
        return out

    def get_service(self, ref: str) -> ServiceConfig | None:
        """The service with this name, else with this id, else None."""
        return self._services_by_key.get(ref)

    def get_upstream(self, ref: str) -> UpstreamConfig | None:
        """The upstream with this name, else with this id, else None."""
        return self._upstreams_by_key.get(ref)

    def upstream_for(self, service: ServiceConfig) -> UpstreamConfig | None:
        """The upstream a service balances over (its ``host`` is the upstream's name), or None for a plain host."""
        for u in self.upstreams:
            if u.name == service.host:
                return u
        return None

    def targets_for(self, upstream: UpstreamConfig) -> list[TargetConfig]:
        """The upstream's nested targets followed by the top-level targets that reference it."""
        out = list(upstream.targets)
        for t in self.targets:
            if t.upstream is not None and self.get_upstream(t.upstream) is upstream:
                out.append(t)
        return out

    def get_certificate(self, ref: str) -> CertificateConfig | None:
        """The certificate with this id (certificates have no name), else None."""
        for c in self.certificates:
            if c.id == ref:
                return c
        return None

    def get_ca_certificate(self, ref: str) -> CACertificateConfig | None:
        for c in self.ca_certificates:
            if c.id == ref:
                return c
        return None

    def all_snis(self) -> list[tuple[str, CertificateConfig]]:
        """Every SNI name with its certificate: nested ones (in file order), then top-level ones.

        Raises ``LookupError`` for a top-level SNI whose certificate does not exist (``load_*`` rejects those).
        """
        out = [(sni.name, c) for c in self.certificates for sni in c.snis]
        for sni in self.snis:
            c = self.get_certificate(sni.certificate) if sni.certificate is not None else None
            if c is None:
                raise LookupError(f"sni {sni.name}: no certificate {sni.certificate!r}")
            out.append((sni.name, c))
        return out

    def all_routes(self) -> list[tuple[RouteConfig, ServiceConfig]]:
        """Every route with its service: routes nested in services (in file order), then top-level routes.

        Raises ``LookupError`` for a top-level route whose service does not exist (``load_*`` rejects those).
        """
        out = [(r, s) for s in self.services for r in s.routes]
        for r in self.routes:
            s = self.get_service(r.service) if r.service is not None else None
            if s is None:
                raise LookupError(f"route {r.name or r.id or '?'}: no service {r.service!r}")
            out.append((r, s))
        return out

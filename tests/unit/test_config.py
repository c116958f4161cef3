"""Config layer: loading Kong 3.x declarative files, defaults, errors (path, line, message), env, hash."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwanmun.config import DeclarativeConfig, LoadedConfig, config_hash, load_data, load_file, load_text
from gwanmun.config.model import (
    ActiveHealthcheck,
    GatewayConfig,
    HealthchecksConfig,
    PassiveHealthcheck,
    RouteConfig,
    ServiceConfig,
    TargetConfig,
    UpstreamConfig,
)
from gwanmun.errors import ConfigError, ConfigIssue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
KONG_EXPORT = FIXTURES / "kong_deck_export.yml"


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load(text: str, env: dict[str, str] | None = None) -> LoadedConfig:
    return load_text(y(text), filename="kong.yml", env=env or {})


def issues_of(text: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as exc:
        load(text, env)
    return exc.value.issues


HEAD = '_format_version: "3.0"\n'


# ----------------------------------------------------------------------------------------------------------------
# A real-world file
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kong_export() -> LoadedConfig:
    return load_file(str(KONG_EXPORT), env={})


def test_kong_export_loads(kong_export: LoadedConfig) -> None:
    cfg = kong_export.config
    assert kong_export.source == str(KONG_EXPORT)
    assert len(kong_export.hash) == 64
    assert cfg.format_version == "3.0" and cfg.transform is True
    assert [s.name for s in cfg.services] == ["orders", "billing", "legacy"]
    assert [r.name for r in cfg.routes] == ["legacy-root", "legacy-by-id"]
    pairs = [(r.name, s.name) for r, s in cfg.all_routes()]
    assert pairs == [
        ("orders-list", "orders"),
        ("orders-item", "orders"),
        ("billing-v2", "billing"),
        ("legacy-root", "legacy"),
        ("legacy-by-id", "legacy"),  # referenced as {id: ...}, the way decK writes it
    ]


def test_kong_export_service_url_is_expanded(kong_export: LoadedConfig) -> None:
    billing = kong_export.config.get_service("billing")
    assert billing is not None
    assert (billing.protocol, billing.host, billing.port, billing.path) == ("http", "billing.internal", 8081, "/api/v2")
    assert billing.read_timeout == 5000 and billing.connect_timeout == 60000


def test_kong_export_upstream_and_targets(kong_export: LoadedConfig) -> None:
    cfg = kong_export.config
    orders = cfg.get_service("orders")
    up = cfg.upstream_for(orders)
    assert up is not None and up.name == "orders.upstream"
    assert up.healthchecks == HealthchecksConfig()  # decK's spelled-out defaults == Kong's defaults
    targets = cfg.targets_for(up)
    assert [(t.host, t.port, t.weight) for t in targets] == [
        ("10.0.0.11", 8000, 100),
        ("10.0.0.12", 8000, 50),
        ("fd00::13", 8000, 0),  # top-level target, referencing its upstream by name
    ]
    assert cfg.upstream_for(cfg.get_service("legacy")) is None


def test_kong_export_routes(kong_export: LoadedConfig) -> None:
    cfg = kong_export.config
    billing = cfg.get_service("billing").routes[0]
    assert billing.hosts == ["billing.example.com", "*.billing.example.com"]
    assert billing.headers == {"x-tenant": ["acme", "~*^beta-"]}
    item = cfg.services[0].routes[1]
    assert item.paths == [r"~/orders/(?<order_id>\d+)$"] and item.regex_paths == item.paths
    assert item.regex_priority == 10 and item.strip_path is False


def test_kong_export_gateway(kong_export: LoadedConfig) -> None:
    gw = kong_export.config.gateway
    assert gw.listen_addresses() == [("0.0.0.0", 8000), ("::", 8000)]
    assert [str(n) for n in gw.trusted_networks()] == ["10.0.0.0/8", "fd00::/8"]
    assert gw.access_log == "off"


def test_kong_export_lines(kong_export: LoadedConfig) -> None:
    text = KONG_EXPORT.read_text().splitlines()
    line = kong_export.lines[("services", 1, "url")]
    assert text[line - 1].strip().startswith("url: http://billing.internal")
    line = kong_export.lines[("services", 0, "routes", 1, "paths", 0)]
    assert "(?<order_id>" in text[line - 1]
    assert text[kong_export.lines[("targets", 0)] - 1].strip().startswith("- target:")


def test_models_are_frozen(kong_export: LoadedConfig) -> None:
    with pytest.raises(Exception):
        kong_export.config.services[0].host = "elsewhere"  # type: ignore[misc]
    with pytest.raises(Exception):
        kong_export.config.gateway.listen = []  # type: ignore[misc]


def test_round_trip_through_model_dump(kong_export: LoadedConfig) -> None:
    dumped = kong_export.config.model_dump(mode="json")
    again = load_data(dumped)
    assert again.config == kong_export.config
    assert again.hash == kong_export.hash


# ----------------------------------------------------------------------------------------------------------------
# Kong's defaults
# ----------------------------------------------------------------------------------------------------------------

KONG_DEFAULTS = [
    # (model, minimal input, field, Kong 3.x default)
    (ServiceConfig, {"host": "a"}, "protocol", "http"),
    (ServiceConfig, {"host": "a"}, "port", 80),
    (ServiceConfig, {"host": "a"}, "path", None),
    (ServiceConfig, {"host": "a"}, "retries", 5),
    (ServiceConfig, {"host": "a"}, "connect_timeout", 60000),
    (ServiceConfig, {"host": "a"}, "write_timeout", 60000),
    (ServiceConfig, {"host": "a"}, "read_timeout", 60000),
    (ServiceConfig, {"host": "a"}, "enabled", True),
    (ServiceConfig, {"host": "a"}, "tags", []),
    (ServiceConfig, {"host": "a"}, "routes", []),
    (RouteConfig, {"paths": ["/"]}, "protocols", ["http", "https"]),
    (RouteConfig, {"paths": ["/"]}, "https_redirect_status_code", 426),
    (RouteConfig, {"paths": ["/"]}, "regex_priority", 0),
    (RouteConfig, {"paths": ["/"]}, "strip_path", True),
    (RouteConfig, {"paths": ["/"]}, "path_handling", "v0"),
    (RouteConfig, {"paths": ["/"]}, "preserve_host", False),
    (RouteConfig, {"paths": ["/"]}, "request_buffering", True),
    (RouteConfig, {"paths": ["/"]}, "response_buffering", True),
    (RouteConfig, {"paths": ["/"]}, "methods", []),
    (RouteConfig, {"paths": ["/"]}, "hosts", []),
    (RouteConfig, {"paths": ["/"]}, "headers", {}),
    (RouteConfig, {"paths": ["/"]}, "service", None),
    (UpstreamConfig, {"name": "u"}, "algorithm", "round-robin"),
    (UpstreamConfig, {"name": "u"}, "slots", 10000),
    (UpstreamConfig, {"name": "u"}, "hash_on", "none"),
    (UpstreamConfig, {"name": "u"}, "hash_fallback", "none"),
    (UpstreamConfig, {"name": "u"}, "host_header", None),
    (UpstreamConfig, {"name": "u"}, "targets", []),
    (TargetConfig, {"target": "a"}, "weight", 100),
    (TargetConfig, {"target": "a"}, "port", 8000),
    (ActiveHealthcheck, {}, "type", "http"),
    (ActiveHealthcheck, {}, "timeout", 1),
    (ActiveHealthcheck, {}, "concurrency", 10),
    (ActiveHealthcheck, {}, "http_path", "/"),
    (ActiveHealthcheck, {}, "https_verify_certificate", True),
    (PassiveHealthcheck, {}, "type", "http"),
    (HealthchecksConfig, {}, "threshold", 0),
    (GatewayConfig, {}, "listen", ["0.0.0.0:8000"]),
    (GatewayConfig, {}, "trusted_ips", []),
    (GatewayConfig, {}, "access_log", "stdout"),
    (GatewayConfig, {}, "request_id_header", "X-Request-ID"),
    (GatewayConfig, {}, "via_header", True),
    (GatewayConfig, {}, "max_request_line", 8192),
    (GatewayConfig, {}, "max_header_size", 61440),
    (GatewayConfig, {}, "max_headers", 100),  # Kong: lua_max_req_headers = 100
    (GatewayConfig, {}, "keepalive_timeout", 75.0),  # nginx keepalive_timeout
    (GatewayConfig, {}, "upstream_keepalive_pool_size", 512),
    (GatewayConfig, {}, "upstream_keepalive_max_requests", 10000),
    (GatewayConfig, {}, "upstream_keepalive_idle_timeout", 60.0),
    (GatewayConfig, {}, "dns_hostsfile", "/etc/hosts"),
    (GatewayConfig, {}, "dns_resolver", []),
    (GatewayConfig, {}, "dns_stale_ttl", 3600.0),
    (GatewayConfig, {}, "dns_not_found_ttl", 30.0),
    (GatewayConfig, {}, "dns_error_ttl", 1.0),
    (GatewayConfig, {}, "dns_valid_ttl", None),
]


@pytest.mark.parametrize(
    "model, data, field, expected", KONG_DEFAULTS, ids=[f"{m.__name__}.{f}" for m, _, f, _ in KONG_DEFAULTS]
)
def test_kong_defaults(model, data, field, expected) -> None:
    assert getattr(model.model_validate(data), field) == expected


def test_healthcheck_defaults_match_kong() -> None:
    hc = HealthchecksConfig()
    assert hc.active.healthy.http_statuses == [200, 302]
    assert hc.active.unhealthy.http_statuses == [429, 404, 500, 501, 502, 503, 504, 505]
    assert hc.passive.healthy.http_statuses == [
        200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308,
    ]
    assert hc.passive.unhealthy.http_statuses == [429, 500, 503]
    assert hc.active.https_sni is None and hc.active.headers is None


# Every supported field set to a non-default value, through YAML, then back through model_dump.
EVERY_FIELD = y("""
    _format_version: "3.0"
    _transform: false
    services:
    - id: 5f7b3c1e-0000-4000-8000-000000000001
      name: svc
      tags: [a, b c]
      protocol: http
      host: svc.internal
      port: 8081
      path: /base
      retries: 0
      connect_timeout: 1
      write_timeout: 2
      read_timeout: 2147483646
      enabled: false
      circuit_breaker: {sliding_window_type: time_based, sliding_window_size: 30, minimum_number_of_calls: 5,
                        failure_rate_threshold: 25, slow_call_rate_threshold: 80, slow_call_duration_threshold: 900,
                        wait_duration_in_open_state: 1500, permitted_number_of_calls_in_half_open_state: 2,
                        max_wait_duration_in_half_open_state: 4000, failure_statuses: [500, 503], per_target: true}
      retry: {max_retries: 3, on_statuses: [503], on_timeout: false, retry_non_idempotent: true, backoff_base: 5,
              backoff_max: 50, body_buffer_limit: 1024,
              budget: {percent_can_retry: 10, min_retries_per_second: 2, ttl: 5000}}
      bulkhead: {max_concurrent_requests: 7, max_queue: 3, queue_timeout: 100}
      fallback: {on: [circuit_open], service: backup}
      routes:
      - id: 5f7b3c1e-0000-4000-8000-000000000002
        name: r1
        tags: [t]
        protocols: [http]
        methods: [GET, PURGE]
        hosts: [a.example.com, "*.b.example.com", "c.example.*", "d.example.com:8443"]
        paths: [/x, "~/y/(?<n>\\\\d+)$"]
        headers: {x-a: [one, "~*tw+o"]}
        https_redirect_status_code: 308
        regex_priority: -3
        strip_path: false
        path_handling: v1
        preserve_host: true
        request_buffering: false
        response_buffering: false
        mirror: {service: backup, percentage: 12.5, body_limit: 100}
    - name: backup
      url: http://backup.internal
    routes:
    - name: r2
      service: svc
      methods: [POST]
    upstreams:
    - id: 5f7b3c1e-0000-4000-8000-000000000003
      name: svc.internal
      tags: [u]
      algorithm: round-robin
      slots: 10
      hash_on: none
      hash_fallback: none
      host_header: backend.example.com:8080
      healthchecks:
        active: {type: https, timeout: 3.5, concurrency: 2, http_path: /health, https_sni: sni.example.com,
                 https_verify_certificate: false, headers: {x-probe: ["1"]},
                 healthy: {http_statuses: [200]}, unhealthy: {http_statuses: [500]}}
        passive: {type: tcp, healthy: {http_statuses: [201]}, unhealthy: {http_statuses: [502]}}
      targets:
      - id: 5f7b3c1e-0000-4000-8000-000000000004
        target: 192.168.0.1:9000
        weight: 65535
        tags: [t1]
    targets:
    - target: backend.local
      upstream: {name: svc.internal}
      weight: 0
    gateway:
      listen: ["127.0.0.1:0", "[::1]:8001"]
      trusted_ips: [127.0.0.1, 10.0.0.0/8, "::1", "fd00::/8"]
      access_log: /var/log/gwanmun/access.log
      request_id_header: X-Trace-Id
      via_header: false
      max_request_line: 4096
      max_header_size: 16384
      max_headers: 50
      keepalive_timeout: 5
      upstream_keepalive_pool_size: 0
      upstream_keepalive_max_requests: 0
      upstream_keepalive_idle_timeout: 0
      dns_hostsfile: /tmp/hosts
      dns_resolver: [8.8.8.8, "1.1.1.1:53", "[2001:4860:4860::8888]:53"]
      dns_stale_ttl: 0
      dns_not_found_ttl: 0.5
      dns_error_ttl: 2
      dns_valid_ttl: 10
""")


def test_every_field_round_trips() -> None:
    loaded = load_text(EVERY_FIELD, env={})
    cfg = loaded.config
    dumped = cfg.model_dump(mode="json")
    assert load_data(dumped).config == cfg
    assert dumped["_transform"] is False
    svc = cfg.services[0]
    assert {k: v for k, v in svc.model_dump().items() if k != "routes"} == {
        "id": "5f7b3c1e-0000-4000-8000-000000000001", "name": "svc", "tags": ["a", "b c"], "protocol": "http",
        "host": "svc.internal", "port": 8081, "path": "/base", "retries": 0, "connect_timeout": 1,
        "write_timeout": 2, "read_timeout": 2147483646, "request_timeout": 0, "enabled": False,
        "client_certificate": None, "tls_verify": None, "tls_verify_depth": None, "ca_certificates": None,
        "circuit_breaker": {
            "sliding_window_type": "time_based", "sliding_window_size": 30, "minimum_number_of_calls": 5,
            "failure_rate_threshold": 25.0, "slow_call_rate_threshold": 80.0, "slow_call_duration_threshold": 900,
            "wait_duration_in_open_state": 1500, "permitted_number_of_calls_in_half_open_state": 2,
            "max_wait_duration_in_half_open_state": 4000, "failure_statuses": [500, 503], "per_target": True,
        },
        "retry": {
            "max_retries": 3, "on_statuses": [503], "on_timeout": False, "retry_non_idempotent": True,
            "backoff_base": 5, "backoff_max": 50, "body_buffer_limit": 1024,
            "budget": {"percent_can_retry": 10.0, "min_retries_per_second": 2.0, "ttl": 5000},
        },
        "bulkhead": {"max_concurrent_requests": 7, "max_queue": 3, "queue_timeout": 100},
        "fallback": {"on": ["circuit_open"], "response": None, "service": "backup"},
        "plugins": [],
    }
    assert svc.routes[0].mirror.model_dump() == {"service": "backup", "percentage": 12.5, "body_limit": 100}
    r1 = svc.routes[0]
    assert r1.methods == ["GET", "PURGE"] and r1.protocols == ["http"]
    assert r1.https_redirect_status_code == 308 and r1.path_handling == "v1" and r1.regex_priority == -3
    assert (r1.strip_path, r1.preserve_host, r1.request_buffering, r1.response_buffering) == (
        False, True, False, False,
    )
    up = cfg.upstreams[0]
    assert up.slots == 10 and up.host_header == "backend.example.com:8080"
    assert up.healthchecks.active.https_sni == "sni.example.com" and up.healthchecks.passive.type == "tcp"
    assert [(t.host, t.port, t.weight) for t in cfg.targets_for(up)] == [("192.168.0.1", 9000, 65535),
                                                                        ("backend.local", 8000, 0)]
    gw = cfg.gateway
    assert gw.listen_addresses() == [("127.0.0.1", 0), ("::1", 8001)]
    assert (gw.keepalive_timeout, gw.dns_valid_ttl, gw.upstream_keepalive_pool_size) == (5.0, 10.0, 0)


# ----------------------------------------------------------------------------------------------------------------
# url shorthand
# ----------------------------------------------------------------------------------------------------------------

URLS = [
    ("http://example.com", ("http", "example.com", 80, None)),
    ("http://example.com/", ("http", "example.com", 80, "/")),
    ("http://example.com:8080/a/b", ("http", "example.com", 8080, "/a/b")),
    ("HTTP://10.0.0.1:81", ("http", "10.0.0.1", 81, None)),
    ("http://[::1]:9000/x", ("http", "::1", 9000, "/x")),
    ("http://[fd00::1]", ("http", "fd00::1", 80, None)),
    ("https://example.com", ("https", "example.com", 443, None)),  # Kong: https without a port is 443
    ("https://example.com:8443/v1", ("https", "example.com", 8443, "/v1")),
]


@pytest.mark.parametrize("url, expected", URLS, ids=[u for u, _ in URLS])
def test_url_shorthand(url: str, expected: tuple) -> None:
    svc = load(HEAD + f"services:\n- name: s\n  url: '{url}'\n").config.services[0]
    assert (svc.protocol, svc.host, svc.port, svc.path) == expected
    assert "url" not in svc.model_dump()  # consumers never re-parse it


def test_url_and_fields_hash_the_same() -> None:
    a = load(HEAD + "services:\n- name: s\n  url: http://example.com:8080/p\n")
    b = load(HEAD + "services:\n- name: s\n  host: example.com\n  port: 8080\n  path: /p\n")
    assert a.hash == b.hash


URL_ERRORS = [
    # body (under `- name: s`), path, line, message
    ("url: http://a\n  host: b", ("services", 0, "url"), 4, "'url' cannot be combined with 'host'"),
    ("url: http://a\n  port: 81\n  path: /x", ("services", 0, "url"), 4,
     "'url' cannot be combined with 'port', 'path'"),
    ("url: grpcs://a", ("services", 0, "url"), 4, "protocol 'grpcs' (from 'url') is not supported by gwanmun yet"),
    ("url: ftp://a", ("services", 0, "url"), 4, "unknown scheme 'ftp'"),
    ("url: example.com", ("services", 0, "url"), 4, "expected scheme://host[:port][/path]"),
    ("url: http://a:99999", ("services", 0, "url"), 4, "invalid url"),
    ("url: http://a/x?y=1", ("services", 0, "url"), 4, "must not have a query string"),
    ("url: http://user:pw@a", ("services", 0, "url"), 4, "credentials in the url are not supported"),
    ("url: http://a/x//y", ("services", 0, "path"), 3, "must not have empty segments"),
    ("port: 80", ("services", 0, "host"), 3, "field 'host' is required (set 'host' or 'url')"),
]


@pytest.mark.parametrize("body, path, line, message", URL_ERRORS, ids=[b.split("\n")[0] for b, *_ in URL_ERRORS])
def test_url_errors(body: str, path: tuple, line: int, message: str) -> None:
    issues = issues_of(HEAD + "services:\n- name: s\n  " + body + "\n")
    assert [(i.path, i.line) for i in issues] == [(path, line)]
    assert message in issues[0].message


# ----------------------------------------------------------------------------------------------------------------
# Errors: path, line and message for each kind of problem
# ----------------------------------------------------------------------------------------------------------------

ERRORS = [
    # id, yaml (after the _format_version line), path, line, message
    ("unknown field", """
        services:
        - name: s
          host: a
          colour: blue
     """, ("services", 0, "colour"), 5, "unknown field 'colour'"),
    ("unsupported kong route field", """
        services:
        - name: s
          host: a
          routes:
          - paths: [/]
            snis: [example.com]
     """, ("services", 0, "routes", 0, "snis"), 7, "field 'snis' is not supported by gwanmun yet"),
    ("unsupported kong service field", """
        services:
        - name: s
          host: a
          filter_chains: [{filters: []}]
     """, ("services", 0, "filter_chains"), 5, "field 'filter_chains' is not supported by gwanmun yet"),
    ("tls field on an http service", """
        services:
        - name: s
          host: a
          tls_verify: true
     """, ("services", 0, "tls_verify"), 5, "'tls_verify' is only allowed when 'protocol' is 'https'"),
    ("consumer group name not a string", """
        consumer_groups:
        - name: {a: 1}
     """, ("consumer_groups", 0, "name"), 3, "expected a string, got a mapping"),
    ("unknown consumer group", """
        consumers:
        - username: x
          groups: [g]
     """, ("consumers", 0, "groups", 0), 4, "no consumer group with name or id 'g'"),
    ("unsupported kong top-level key", """
        vaults:
        - name: env
          prefix: my-env
     """, ("vaults",), 2, "field 'vaults' is not supported by gwanmun yet"),
    ("unsupported kong upstream field", """
        upstreams:
        - name: u
          use_srv_name: true
     """, ("upstreams", 0, "use_srv_name"), 4, "field 'use_srv_name' is not supported by gwanmun yet"),
    ("unsupported sticky-sessions field away from its default", """
        upstreams:
        - name: u
          sticky_sessions_cookie_path: /other
     """, ("upstreams", 0, "sticky_sessions_cookie_path"), 4, "field 'sticky_sessions_cookie_path' is not supported"),
    ("unsupported protocol", """
        services:
        - name: s
          host: a
          protocol: grpc
     """, ("services", 0, "protocol"), 5, "protocol 'grpc' is not supported by gwanmun yet"),
    ("unsupported route protocol", """
        routes:
        - service: s
          paths: [/]
          protocols: [tcp]
        services: [{name: s, host: a}]
     """, ("routes", 0, "protocols", 0), 5, "protocol 'tcp' is not supported by gwanmun yet"),
    ("unsupported algorithm", """
        upstreams:
        - name: u
          algorithm: sticky-sessions
     """, ("upstreams", 0, "algorithm"), 4, "algorithm 'sticky-sessions' is not supported by gwanmun yet"),
    ("hash_on header without hash_on_header", """
        upstreams:
        - name: u
          hash_on: header
     """, ("upstreams", 0, "hash_on_header"), 3, "field 'hash_on_header' is required when hash_on is 'header'"),
    ("health checks threshold", """
        upstreams:
        - name: u
          healthchecks:
            threshold: 50
     """, ("upstreams", 0, "healthchecks", "threshold"), 5,
     "healthchecks 'threshold' is not supported by gwanmun yet"),
    ("grpc active health checks", """
        upstreams:
        - name: u
          healthchecks:
            active:
              type: grpc
              healthy: {interval: 5}
     """, ("upstreams", 0, "healthchecks"), 4,
     "active health checks of type 'grpc' are not supported by gwanmun yet"),
    ("bad type", """
        services:
        - name: s
          host: a
          port: "80"
     """, ("services", 0, "port"), 5, "expected an integer, got a string"),
    ("bad bool", """
        services:
        - name: s
          host: a
          enabled: 1
     """, ("services", 0, "enabled"), 5, "expected a boolean (true or false), got an integer"),
    ("bad enum path_handling", """
        services:
        - name: s
          host: a
          routes:
          - paths: [/]
            path_handling: v2
     """, ("services", 0, "routes", 0, "path_handling"), 7, "invalid value 'v2': expected 'v0' or 'v1'"),
    ("bad enum redirect code", """
        services:
        - name: s
          host: a
          routes:
          - paths: [/]
            https_redirect_status_code: 303
     """, ("services", 0, "routes", 0, "https_redirect_status_code"), 7,
     "invalid value 303: expected one of 426, 301, 302, 307, 308"),
    ("out of range", """
        services:
        - name: s
          host: a
          read_timeout: 0
     """, ("services", 0, "read_timeout"), 5, "must be between 1 and 2147483646, got 0"),
    ("bad regex", """
        services:
        - name: s
          host: a
          routes:
          - paths:
            - /ok
            - ~/items/(\\d+
     """, ("services", 0, "routes", 0, "paths", 1), 8, "invalid regex '/items/(\\d+'"),
    ("bad header regex", """
        services:
        - name: s
          host: a
          routes:
          - headers: {x-v: ["~*a[b"]}
     """, ("services", 0, "routes", 0, "headers", "x-v"), 6, "invalid regex 'a[b'"),
    ("host header in headers", """
        services:
        - name: s
          host: a
          routes:
          - headers: {Host: [example.com]}
     """, ("services", 0, "routes", 0, "headers"), 6, "cannot contain 'host' header"),
    ("dangling service ref", """
        services:
        - name: s
          host: a
        routes:
        - name: r
          service: nope
          paths: [/]
     """, ("routes", 0, "service"), 7, "no service with name or id 'nope'"),
    ("dangling service ref by id (decK style)", """
        services:
        - name: s
          host: a
        routes:
        - name: r
          service: {id: 5f7b3c1e-0000-4000-8000-00000000000f}
          paths: [/]
     """, ("routes", 0, "service"), 7, "no service with name or id '5f7b3c1e-0000-4000-8000-00000000000f'"),
    ("dangling upstream ref", """
        targets:
        - target: 10.0.0.1
          upstream: nope
     """, ("targets", 0, "upstream"), 4, "no upstream with name or id 'nope'"),
    ("duplicate service names", """
        services:
        - name: s
          host: a
        - name: s
          host: b
     """, ("services", 1, "name"), 5, "duplicate service name 's' (already used at services[0].name, line 3)"),
    ("duplicate route names across nesting", """
        services:
        - name: s
          host: a
          routes:
          - name: r
            paths: [/a]
        routes:
        - name: r
          service: s
          paths: [/b]
     """, ("routes", 0, "name"), 9, "duplicate route name 'r'"),
    ("duplicate upstream ids", """
        upstreams:
        - name: u1
          id: 5f7b3c1e-0000-4000-8000-000000000001
        - name: u2
          id: 5f7b3c1e-0000-4000-8000-000000000001
     """, ("upstreams", 1, "id"), 6, "duplicate upstream id"),
    ("duplicate target", """
        upstreams:
        - name: u
          targets:
          - target: 10.0.0.1
          - target: 10.0.0.1:8000
     """, ("upstreams", 0, "targets", 1, "target"), 6, "duplicate target '10.0.0.1:8000' in this upstream"),
    ("duplicate YAML key", """
        services:
        - name: s
          host: a
          host: b
     """, ("services", 0, "host"), 5, "duplicate key 'host' (first set at line 4)"),
    ("route with no matcher", """
        services:
        - name: s
          host: a
          routes:
          - name: r
            strip_path: false
     """, ("services", 0, "routes", 0), 6,
     "route has nothing to match on: set at least one of 'methods', 'hosts', 'headers' or 'paths'"),
    ("nested route with service", """
        services:
        - name: s
          host: a
          routes:
          - paths: [/]
            service: s
     """, ("services", 0, "routes", 0, "service"), 7, "a route nested under a service must not set 'service'"),
    ("top-level route without service", """
        routes:
        - name: r
          paths: [/]
     """, ("routes", 0, "service"), 3, "field 'service' is required for a top-level route"),
    ("missing required field", """
        upstreams:
        - targets: []
     """, ("upstreams", 0, "name"), 3, "field 'name' is required"),
    ("missing format version", None, ("_format_version",), 1, "field '_format_version' is required"),
    ("old format version", "_format_version: '2.1'", ("_format_version",), 1,
     "format version '2.1' is not supported"),
    ("bad wildcard host", """
        services:
        - name: s
          host: a
          routes:
          - hosts: [a.*.example.com]
     """, ("services", 0, "routes", 0, "hosts", 0), 6, "the wildcard must be the leftmost or rightmost label"),
    ("non-normalized prefix path", """
        services:
        - name: s
          host: a
          routes:
          - paths: [/a/../b]
     """, ("services", 0, "routes", 0, "paths", 0), 6, "non-normalized path '/a/../b', use '/b' instead"),
    ("upstream name is an IP", """
        upstreams:
        - name: 10.0.0.1
     """, ("upstreams", 0, "name"), 3, "no IP addresses allowed"),
    ("bad target", """
        upstreams:
        - name: u
          targets: [{target: "bad host"}]
     """, ("upstreams", 0, "targets", 0, "target"), 4, "invalid target 'bad host'"),
    ("bad name", """
        services:
        - name: my service
          host: a
     """, ("services", 0, "name"), 3, "invalid name 'my service'"),
    ("bad id", """
        services:
        - id: 42-not-a-uuid
          host: a
     """, ("services", 0, "id"), 3, "expected a UUID"),
    ("gateway unknown kong.conf name", """
        gateway:
          proxy_listen: 0.0.0.0:8000
     """, ("gateway", "proxy_listen"), 3, "unknown field 'proxy_listen' (gwanmun calls this setting 'listen')"),
    ("gateway bad trusted ip", """
        gateway:
          trusted_ips: [10.0.0.0/33]
     """, ("gateway", "trusted_ips", 0), 3, "invalid IP address or CIDR range '10.0.0.0/33'"),
    ("gateway listen flags", """
        gateway:
          listen: ["0.0.0.0:8443 ssl http2"]
     """, ("gateway", "listen", 0), 3, "listen flag 'http2' is not supported by gwanmun yet (only 'ssl' is)"),
    ("gateway head limits", """
        gateway:
          max_request_line: 9000
          max_header_size: 8000
     """, ("gateway",), 2, "max_header_size (8000) must be at least max_request_line (9000)"),
]


@pytest.mark.parametrize("body, path, line, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error(body: str | None, path: tuple, line: int, message: str) -> None:
    if body is None:
        text = "services: []\n"
    elif body.startswith("_format_version"):
        text = body + "\n"
    else:
        text = HEAD + y(body)
    with pytest.raises(ConfigError) as exc:
        load_text(text, filename="kong.yml", env={})
    issues = exc.value.issues
    assert len(issues) == 1, str(exc.value)
    (issue,) = issues
    assert issue.path == path
    assert issue.line == line
    assert issue.file == "kong.yml"
    assert message in issue.message, issue.message


def test_yaml_syntax_error_has_file_and_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(HEAD + "services:\n- name: s\n  host: a: b\n  port: 80\n", filename="kong.yml", env={})
    (issue,) = exc.value.issues
    assert issue.file == "kong.yml" and issue.path == ()
    assert issue.line == 4
    assert issue.message == "YAML syntax error: mapping values are not allowed here"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the config is empty"),
        ("- a\n- b\n", "the config must be a YAML mapping"),
        ("a: 1\n---\nb: 2\n", "YAML syntax error: expected a single document in the stream (line 1), but found"),
        ("a: &x [*x]\n", "recursive YAML alias"),
    ],
    ids=["empty", "not a mapping", "two documents", "recursive alias"],
)
def test_bad_documents(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(text, env={})
    assert any(message in i.message for i in exc.value.issues), str(exc.value)


def test_all_errors_are_reported_at_once_sorted_by_line() -> None:
    issues = issues_of(HEAD + y("""
        services:
        - name: s
          host: a
          port: eighty
          routes:
          - name: r
            paths: [relative]
            frobnicate: true
        - name: s
          host: b
          host: c
        routes:
        - name: top
          service: ghost
          methods: [GET]
        upstreams:
        - name: u
          algorithm: sticky-sessions
        gateway:
          listen: [nope]
    """))
    got = [(i.line, i.message.split(":")[0]) for i in issues]
    assert [line for line, _ in got] == sorted(line for line, _ in got)
    paths = [i.path for i in issues]
    assert paths == [
        ("services", 0, "port"),
        ("services", 0, "routes", 0, "paths", 0),
        ("services", 0, "routes", 0, "frobnicate"),
        ("services", 1, "name"),
        ("services", 1, "host"),
        ("routes", 0, "service"),
        ("upstreams", 0, "algorithm"),
        ("gateway", "listen", 0),
    ]
    assert [i.line for i in issues] == [5, 8, 9, 10, 12, 15, 19, 21]


def test_config_error_str_lists_file_line_path_message() -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(HEAD + "services:\n- name: s\n  host: a\n  colour: blue\n  port: x\n", filename="kong.yml", env={})
    assert str(exc.value) == (
        "kong.yml:5: services[0].colour: unknown field 'colour'\n"
        "kong.yml:6: services[0].port: expected an integer, got a string"
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("use_srv_name", "false"),
        ("hash_on_cookie_path", "/"),
        ("client_certificate", "null"),
        ("sticky_sessions_cookie_path", "/"),
    ],
)
def test_unsupported_upstream_fields_accepted_at_kong_default(field: str, value: str) -> None:
    base = load(HEAD + "upstreams:\n- name: u\n")
    with_default = load(HEAD + f"upstreams:\n- name: u\n  {field}: {value}\n")
    assert with_default.hash == base.hash


@pytest.mark.parametrize(
    "snippet",
    ["snis: []", "sources: null", "destinations: []", "plugins: []"],
)
def test_unsupported_route_fields_accepted_when_empty(snippet: str) -> None:
    cfg = load(HEAD + f"services:\n- name: s\n  host: a\n  routes:\n  - paths: [/]\n    {snippet}\n").config
    assert cfg.services[0].routes[0].paths == ["/"]


def test_kong_annotations_and_timestamps_are_ignored() -> None:
    a = load(HEAD + "_comment: hi\nservices:\n- name: s\n  host: a\n  _comment: x\n  created_at: 1700000000\n")
    b = load(HEAD + "services:\n- name: s\n  host: a\n")
    assert a.hash == b.hash


# ----------------------------------------------------------------------------------------------------------------
# Environment interpolation
# ----------------------------------------------------------------------------------------------------------------

ENV_CASES = [
    ("host: ${HOST}", {"HOST": "backend"}, "host", "backend"),
    ("host: ${HOST:-fallback}", {}, "host", "fallback"),
    ("host: ${HOST:-fallback}", {"HOST": ""}, "host", "fallback"),
    ("host: ${HOST:-fallback}", {"HOST": "set"}, "host", "set"),
    ("host: ${A}.${B}.internal", {"A": "x", "B": "y"}, "host", "x.y.internal"),
    ("port: ${PORT}", {"PORT": "8081"}, "port", 8081),  # plain scalar: typed as YAML would type it
    ("port: ${PORT:-9000}", {}, "port", 9000),
    ("enabled: ${ON}", {"ON": "false"}, "enabled", False),
    ("host: '${H}'", {"H": "quoted"}, "host", "quoted"),
    ("host: x${EMPTY}y", {"EMPTY": ""}, "host", "xy"),
]


@pytest.mark.parametrize("line, env, field, expected", ENV_CASES, ids=[c[0] + repr(c[1]) for c in ENV_CASES])
def test_env_interpolation(line: str, env: dict, field: str, expected) -> None:
    text = HEAD + "services:\n- name: s\n  " + ("host: h\n  " if not line.startswith("host") else "") + line + "\n"
    svc = load_text(text, env=env).config.services[0]
    assert getattr(svc, field) == expected


def test_env_double_dollar_is_a_literal() -> None:
    text = HEAD + "services:\n- name: s\n  host: h\n  tags: ['$${NOT_A_VAR}', 'a$$b', 'x$${Y}z${Y}']\n"
    svc = load_text(text, env={"Y": "v"}).config.services[0]
    assert svc.tags == ["${NOT_A_VAR}", "a$$b", "x${Y}zv"]


def test_env_quoted_number_stays_a_string() -> None:
    with pytest.raises(ConfigError) as exc:
        load_text(HEAD + "services:\n- name: s\n  host: h\n  port: '${P}'\n", env={"P": "81"})
    assert exc.value.issues[0].message == "expected an integer, got a string"


@pytest.mark.parametrize(
    "value, message",
    [
        ("${NOPE}", "environment variable 'NOPE' is not set (use ${NOPE:-default} to give a default)"),
        ("x${OPEN", "unterminated '${' (write '$${' for a literal '${')"),
        ("${1BAD}", "invalid variable reference '${1BAD}': expected ${NAME} or ${NAME:-default}"),
    ],
    ids=["missing", "unterminated", "bad name"],
)
def test_env_errors(value: str, message: str) -> None:
    issues = issues_of(HEAD + f"services:\n- name: s\n  host: '{value}'\n")
    assert [(i.path, i.line, i.message) for i in issues] == [(("services", 0, "host"), 4, message)]


def test_env_errors_are_collected_with_other_errors() -> None:
    issues = issues_of(HEAD + "services:\n- name: s\n  host: ${A}\n  port: ${B}\n  bogus: 1\n")
    assert [i.path[-1] for i in issues] == ["host", "port", "bogus"]


def test_env_error_does_not_cascade() -> None:
    issues = issues_of(HEAD + "services:\n- name: s\n  url: http://backend:${PORT}\n")
    assert [(i.path, i.message) for i in issues] == [
        (("services", 0, "url"), "environment variable 'PORT' is not set (use ${PORT:-default} to give a default)")
    ]


def test_env_secret_never_appears_in_errors() -> None:
    secret = "s3cr3t-p4ss"
    issues = issues_of(
        HEAD + "services:\n- name: s\n  url: 'http://${PW}@host'\n- name: t\n  host: 'bad ${PW} host'\n",
        env={"PW": secret},
    )
    assert len(issues) == 2
    assert all(secret not in str(i) for i in issues)
    assert "<redacted>" in issues[1].message


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GWANMUN_TEST_HOST", "from-environ")
    svc = load_text(HEAD + "services:\n- name: s\n  host: ${GWANMUN_TEST_HOST}\n").config.services[0]
    assert svc.host == "from-environ"


@given(st.text(alphabet=st.characters(blacklist_characters="$'\\", blacklist_categories=("Cs", "Cc")), max_size=40))
def test_env_strings_without_dollar_are_untouched(text: str) -> None:
    from gwanmun.config.load import _Reader

    assert _Reader("x", {}).interpolate(text, (), 1) == text


@given(st.text(alphabet="ab${}:-_AZ", max_size=30))
def test_env_escape_round_trip(text: str) -> None:
    """'$${' always yields a literal '${', whatever surrounds it."""
    from gwanmun.config.load import _Reader

    escaped = text.replace("${", "$${")
    reader = _Reader("x", {})
    assert reader.interpolate(escaped, (), 1) == text
    assert reader.issues == []


# ----------------------------------------------------------------------------------------------------------------
# Hash
# ----------------------------------------------------------------------------------------------------------------

BASE = y("""
    _format_version: "3.0"
    services:
    - name: s
      host: backend
      port: 8080
      routes:
      - name: r
        paths: [/a]
        methods: [GET]
""")

SAME_CONFIG = {
    "comments and blank lines": y("""
        # header comment
        _format_version: "3.0"

        services:   # services
        - name: s   # the service
          host: backend
          port: 8080
          routes:
          - name: r
            paths: [/a]
            methods: [GET]
    """),
    "key order": y("""
        services:
        - routes:
          - methods: [GET]
            paths: [/a]
            name: r
          port: 8080
          host: backend
          name: s
        _format_version: "3.0"
    """),
    "flow style": '{_format_version: "3.0", services: [{name: s, host: backend, port: 8080, '
                  'routes: [{name: r, paths: ["/a"], methods: ["get"]}]}]}\n',
    "defaults spelled out": BASE.replace("      methods: [GET]\n", "      methods: [GET]\n      strip_path: true\n")
    + "gateway:\n  listen: ['0.0.0.0:8000']\n  via_header: true\n",
    "url shorthand": BASE.replace("  host: backend\n  port: 8080\n", "  url: http://backend:8080\n"),
}


@pytest.mark.parametrize("variant", list(SAME_CONFIG), ids=list(SAME_CONFIG))
def test_hash_ignores_formatting(variant: str) -> None:
    assert load_text(SAME_CONFIG[variant], env={}).hash == load_text(BASE, env={}).hash


@pytest.mark.parametrize(
    "change",
    [("port: 8080", "port: 8081"), ("paths: [/a]", "paths: [/b]"), ("methods: [GET]", "methods: [GET, POST]")],
    ids=["port", "path", "methods"],
)
def test_hash_changes_with_content(change: tuple[str, str]) -> None:
    assert load_text(BASE.replace(*change), env={}).hash != load_text(BASE, env={}).hash


def test_hash_matches_config_hash() -> None:
    loaded = load_text(BASE, env={})
    assert loaded.hash == config_hash(loaded.config)


# ----------------------------------------------------------------------------------------------------------------
# YAML details and files
# ----------------------------------------------------------------------------------------------------------------


def test_yaml_merge_keys() -> None:
    cfg = load(HEAD + y("""
        services:
        - <<: &t {connect_timeout: 1000, read_timeout: 2000}
          name: a
          host: a
        - <<: *t
          name: b
          host: b
          read_timeout: 3000
    """)).config
    assert [(s.connect_timeout, s.read_timeout) for s in cfg.services] == [(1000, 2000), (1000, 3000)]


def test_yaml_merge_keys_explicit_keys_keep_their_lines() -> None:
    loaded = load(HEAD + y("""
        services:
        - <<: &t {host: a, port: 80}
          name: a
        - <<: [*t, {retries: 1, port: 81}]
          name: b
          port: 82
    """))
    svc = loaded.config.services[1]
    assert (svc.host, svc.port, svc.retries) == ("a", 82, 1)
    assert loaded.lines[("services", 1, "port")] == 7
    assert loaded.lines[("services", 1, "retries")] == 5


def test_docs_example_loads() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    example = doc.split("## Full example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = load_text(example, filename="docs/config.md", env={}).config
    assert len(cfg.all_routes()) == 4
    assert cfg.gateway.dns_resolver == ["10.0.0.2"]


def test_lines_point_at_keys_and_items() -> None:
    loaded = load(HEAD + "services:\n- name: s\n  host: a\n  routes:\n  - paths:\n    - /x\n")
    assert loaded.lines[()] == 1
    assert loaded.lines[("services",)] == 2
    assert loaded.lines[("services", 0)] == 3
    assert loaded.lines[("services", 0, "host")] == 4
    assert loaded.lines[("services", 0, "routes", 0, "paths", 0)] == 7


def test_load_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_file(str(tmp_path / "nope.yml"))
    (issue,) = exc.value.issues
    assert issue.file.endswith("nope.yml") and "cannot read config file" in issue.message


def test_load_file_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "bad.yml"
    p.write_bytes(b'_format_version: "3.0"\nservices:\n- name: \xff\n')
    with pytest.raises(ConfigError) as exc:
        load_file(str(p))
    assert exc.value.issues[0].line == 3 and "UTF-8" in exc.value.issues[0].message


def test_load_data_reports_like_load_text() -> None:
    with pytest.raises(ConfigError) as exc:
        load_data({"_format_version": "3.0", "services": [{"name": "s", "host": "a", "snis": ["x"]}]})
    assert [str(i) for i in exc.value.issues] == ["<data>: services[0].snis: unknown field 'snis'"]


def test_declarative_config_lookups_prefer_names() -> None:
    sid = "5f7b3c1e-0000-4000-8000-000000000001"
    cfg = DeclarativeConfig.model_validate(
        {"_format_version": "3.0", "services": [{"id": sid, "name": "a", "host": "x"}, {"name": sid, "host": "y"}]}
    )
    assert cfg.get_service(sid).host == "y"  # Kong looks references up by name first, then by id
    assert cfg.get_service("a").host == "x"
    assert cfg.get_service("zzz") is None

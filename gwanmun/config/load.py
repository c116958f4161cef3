"""Loading a declarative config file: YAML with line numbers, ``${ENV}`` interpolation, validation, hashing.

Pipeline: compose the YAML node tree (SafeLoader) and build plain values ourselves, recording the 1-based line of
every field path and rejecting duplicate keys -> interpolate ``${NAME}`` / ``${NAME:-default}`` in string scalars
-> validate with the pydantic models -> cross-entity checks (references, uniqueness). Every problem found along
the way is collected; if there is any, one ``ConfigError`` lists them all, sorted by line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, ConfigIssue, Path, format_path
from .model import TARGET_DEFAULT_PORT, DeclarativeConfig, describe_extra_field, parse_host_port

__all__ = ["LoadedConfig", "config_hash", "load_data", "load_file", "load_text"]

MAX_VALUES = 1_000_000  # guards against alias ("billion laughs") expansion


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from.

    ``hash`` is the sha256 (hex) of the canonical JSON of the validated config, so formatting, comments, key order
    and equivalent spellings (``url`` vs host/port, defaults written out or not) do not change it. ``lines`` maps a
    field path as written in the file (e.g. ``('services', 0, 'routes', 1, 'paths', 0)``) to its 1-based line.
    """

    config: DeclarativeConfig
    source: str
    hash: str
    lines: dict[tuple, int] = field(default_factory=dict, compare=False, repr=False)


def config_hash(config: DeclarativeConfig) -> str:
    """sha256 (hex) of the config's canonical JSON: ``model_dump(mode="json")``, sorted keys, no whitespace."""
    data = config.model_dump(mode="json", by_alias=True)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------


def load_file(path: str, *, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, interpolate and validate a config file. Raises ``ConfigError``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([ConfigIssue((), f"cannot read config file: {e.strerror or e}", file=path)]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue((), "the file is not valid UTF-8", file=path, line=line)]) from None
    return load_text(text, filename=path, env=env)


def load_text(text: str, filename: str = "<string>", *, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Parse, interpolate (``env`` defaults to ``os.environ``) and validate YAML text. Raises ``ConfigError``."""
    reader = _Reader(filename, os.environ if env is None else env)
    data = reader.read(text)
    return _validate(data, filename, reader.lines, reader.issues, reader.failed_paths, reader.secrets)


def load_data(data: Any, filename: str = "<data>", *, lines: Mapping[tuple, int] | None = None) -> LoadedConfig:
    """Validate already-parsed data (no interpolation), with the same checks and errors as ``load_text``."""
    return _validate(data, filename, dict(lines or {}), [], set(), [])


# --------------------------------------------------------------------------------------------------------------
# YAML -> plain values, with lines
# --------------------------------------------------------------------------------------------------------------

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Reader:
    def __init__(self, filename: str, env: Mapping[str, str]) -> None:
        self.filename = filename
        self.env = env
        self.lines: dict[tuple, int] = {}
        self.issues: list[ConfigIssue] = []
        self.failed_paths: set[tuple] = set()  # values whose interpolation failed
        self.secrets: list[tuple[tuple, str]] = []  # (path, substituted env value): never echoed in messages
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()
        self._count = 0
        self._stack: set[int] = set()

    def issue(self, path: Path, message: str, line: int | None) -> None:
        self.issues.append(ConfigIssue(tuple(path), message, file=self.filename, line=line))

    def read(self, text: str) -> Any:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or "invalid YAML"
            if e.context:
                where = f" (line {e.context_mark.line + 1})" if e.context_mark is not None else ""
                problem = f"{e.context}{where}, {problem}"
            line = mark.line + 1 if mark is not None else None
            raise ConfigError([ConfigIssue((), f"YAML syntax error: {problem}", self.filename, line)]) from None
        except yaml.YAMLError as e:
            raise ConfigError([ConfigIssue((), f"YAML error: {e}", self.filename)]) from None
        if root is None:
            raise ConfigError([ConfigIssue((), "the config is empty: expected at least '_format_version'",
                                           self.filename, 1)])
        self.lines[()] = root.start_mark.line + 1
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError([ConfigIssue((), "the config must be a YAML mapping (with '_format_version', "
                                               "'services', ...)", self.filename, root.start_mark.line + 1)])
        return self.build(root, ())

    # ---- nodes -----------------------------------------------------------------------------------------------

    def build(self, node: yaml.Node, path: tuple) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            raise ConfigError([ConfigIssue(path, "the config is too large (too many values after expanding YAML "
                                                 "aliases)", self.filename, node.start_mark.line + 1)])
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self._stack:
            self.issue(path, "recursive YAML alias", node.start_mark.line + 1)
            return None
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                out = []
                for i, item in enumerate(node.value):
                    self.lines.setdefault(path + (i,), item.start_mark.line + 1)
                    out.append(self.build(item, path + (i,)))
                return out
            return self.mapping(node, path)
        finally:
            self._stack.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: tuple) -> dict[str, Any]:
        # YAML merge keys (`<<: *defaults`) first, so that explicit keys override both their values and their
        # lines; among merged mappings the earlier one wins.
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in reversed(sources):
                    if not isinstance(src, yaml.MappingNode):
                        self.issue(path, "a '<<' merge key needs a mapping or a list of mappings",
                                   src.start_mark.line + 1)
                        continue
                    out.update(self.mapping(src, path))
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.issue(path, "mapping keys must be plain strings", line)
                continue
            key = key_node.value  # keys are taken as written: `on:` stays "on", `80:` is "80"
            if key in first_line:
                self.issue(path + (key,), f"duplicate key '{key}' (first set at line {first_line[key]})", line)
                continue
            first_line[key] = line
            self.lines[path + (key,)] = line
            out[key] = self.build(value_node, path + (key,))
        return out

    def scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        if node.tag == _STR_TAG and "${" in node.value:
            value = self.interpolate(node.value, path, node.start_mark.line + 1)
            if path in self.failed_paths:
                # keep the text as written: its own error is reported, and the errors that follow from it at this
                # path are dropped, but a placeholder such as "" or null could cause misleading errors elsewhere
                return node.value
            if node.style is None and value != node.value:  # plain scalar: type the result as YAML would
                tag = self._resolver.resolve(yaml.ScalarNode, value, (True, False))
                node = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark)
            else:
                return value
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            self.issue(path, f"invalid value: {e.problem}", node.start_mark.line + 1)
            return None

    def interpolate(self, text: str, path: tuple, line: int) -> str:
        """``${NAME}``, ``${NAME:-default}`` (default when unset or empty), ``$${`` for a literal ``${``."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if text.startswith("$${", i):
                out.append("${")
                i += 3
                continue
            if not text.startswith("${", i):
                out.append(text[i])
                i += 1
                continue
            end = text.find("}", i + 2)
            if end < 0:
                self.failed_paths.add(path)
                self.issue(path, "unterminated '${' (write '$${' for a literal '${')", line)
                return ""
            inner = text[i + 2 : end]
            name, sep, default = inner.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                self.failed_paths.add(path)
                self.issue(path, f"invalid variable reference '${{{inner}}}': expected ${{NAME}} or "
                                 f"${{NAME:-default}}", line)
                return ""
            value = self.env.get(name)
            if sep and not value:
                value = default
            elif value is None:
                self.failed_paths.add(path)
                self.issue(path, f"environment variable '{name}' is not set (use ${{{name}:-default}} to give "
                                 f"a default)", line)
                return ""
            elif value:
                self.secrets.append((path, value))
            out.append(value)
            i = end + 1
        return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Validation and error conversion
# --------------------------------------------------------------------------------------------------------------


def _validate(
    data: Any,
    filename: str,
    lines: dict[tuple, int],
    issues: list[ConfigIssue],
    failed_paths: set[tuple],
    secrets: list[tuple[tuple, str]],
) -> LoadedConfig:
    issues = list(issues)
    config: DeclarativeConfig | None = None
    if not isinstance(data, dict):
        issues.append(ConfigIssue((), "the config must be a mapping (with '_format_version', 'services', ...)",
                                  filename, lines.get(())))
    else:
        try:
            config = DeclarativeConfig.model_validate(data)
        except ValidationError as e:
            issues.extend(_convert(e, filename, lines))
        issues.extend(
            ConfigIssue(path, message, filename, _line(path, lines)) for path, message in _semantic_issues(data, lines)
        )
        issues.extend(_plugin_issues(data, filename, lines))
    if failed_paths:  # a value that could not be interpolated also fails validation: report it once
        issues = [
            i for i in issues
            if not any(i.path[: len(p)] == p for p in failed_paths) or _is_interpolation_issue(i)
        ]
    if issues:
        issues = [_scrub(i, secrets) for i in _dedupe(issues)]
        issues.sort(key=lambda i: (i.line is None, i.line or 0, format_path(i.path)))
        raise ConfigError(issues)
    assert config is not None
    return LoadedConfig(config=config, source=filename, hash=config_hash(config), lines=lines)


def _is_interpolation_issue(issue: ConfigIssue) -> bool:
    m = issue.message
    return m.startswith(("environment variable", "unterminated '${'", "invalid variable reference"))


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return list(dict.fromkeys(issues))


def _line(path: tuple, lines: Mapping[tuple, int]) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    for n in range(len(path), -1, -1):
        line = lines.get(path[:n])
        if line is not None:
            return line
    return None


def _scrub(issue: ConfigIssue, secrets: list[tuple[tuple, str]]) -> ConfigIssue:
    """Remove interpolated environment values from a message (they may be secrets)."""
    message = issue.message
    for path, value in secrets:
        related = issue.path[: len(path)] == path or path[: len(issue.path)] == issue.path
        if value in message and (related or len(value) >= 6):
            message = message.replace(value, "<redacted>")
    if message == issue.message:
        return issue
    return ConfigIssue(issue.path, message, issue.file, issue.line)


_CONTAINER_KIND = {
    "services": "service", "routes": "route", "upstreams": "upstream", "targets": "target",
    "certificates": "certificate", "snis": "sni", "ca_certificates": "ca_certificate",
}

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} (quote it to make it a string)"


_INTERNAL_LOC = re.compile(r"\[key\]|[a-z_-]+\[.*\]")


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's internal loc parts: union/validator tags such as 'function-after[...]' and '[key]'."""
    return tuple(p for p in loc if isinstance(p, int) or not _INTERNAL_LOC.fullmatch(p))


def _entity_kind(parent: tuple) -> str | None:
    if not parent:
        return "root"
    if parent == ("gateway",):
        return "gateway"
    if len(parent) >= 2 and isinstance(parent[-1], int) and parent[-2] in _CONTAINER_KIND:
        return _CONTAINER_KIND[parent[-2]]
    return None


def _message(err: dict[str, Any], loc: tuple) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return f"field '{loc[-1]}' is required" if loc else "required"
    if kind == "extra_forbidden":
        return describe_extra_field(_entity_kind(loc[:-1]), str(loc[-1]))
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {_type_name(value)}"
    if kind == "literal_error":
        shown = f"'{value}'" if isinstance(value, str) else str(value)
        return f"invalid value {shown}: expected {ctx.get('expected', 'one of the allowed values')}"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} items"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


def _convert(error: ValidationError, filename: str, lines: Mapping[tuple, int]) -> list[ConfigIssue]:
    out = []
    for err in error.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        out.append(ConfigIssue(loc, _message(err, loc), filename, _line(loc, lines)))
    return out


# --------------------------------------------------------------------------------------------------------------
# Cross-entity checks, on the raw data so they run even when some entity failed validation
# --------------------------------------------------------------------------------------------------------------


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(value, list):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]


def _ref_key(ref: Any) -> str | None:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict) and len(ref) == 1:
        (k, v), = ref.items()
        if k in ("id", "name") and isinstance(v, str):
            return v
    return None


def _target_key(target: Any) -> tuple[str, int] | None:
    if not isinstance(target, str):
        return None
    try:
        kind, host, port = parse_host_port(target)
    except ValueError:
        return None
    return (host.lower() if kind == "name" else host), (TARGET_DEFAULT_PORT if port is None else port)


def _semantic_issues(data: dict[str, Any], lines: Mapping[tuple, int]) -> list[tuple[tuple, str]]:
    issues: list[tuple[tuple, str]] = []

    def where(path: tuple) -> str:
        line = _line(path, lines)
        return f"{format_path(path)}" + (f", line {line}" if line is not None else "")

    def unique(value: Any, path: tuple, seen: dict[str, tuple], what: str) -> None:
        if not isinstance(value, str):
            return
        if value in seen:
            issues.append((path, f"duplicate {what} '{value}' (already used at {where(seen[value])})"))
        else:
            seen[value] = path

    services = _items(data.get("services"))
    service_names: dict[str, tuple] = {}
    service_ids: dict[str, tuple] = {}
    for i, s in services:
        unique(s.get("name"), ("services", i, "name"), service_names, "service name")
        unique(s.get("id"), ("services", i, "id"), service_ids, "service id")

    route_names: dict[str, tuple] = {}
    route_ids: dict[str, tuple] = {}
    all_routes = [(("services", i, "routes", j), r) for i, s in services for j, r in _items(s.get("routes"))]
    all_routes += [(("routes", i), r) for i, r in _items(data.get("routes"))]
    for path, r in all_routes:
        unique(r.get("name"), path + ("name",), route_names, "route name")
        unique(r.get("id"), path + ("id",), route_ids, "route id")
    for i, r in _items(data.get("routes")):
        key = _ref_key(r.get("service"))
        if key is not None and key not in service_names and key not in service_ids:
            issues.append((("routes", i, "service"), f"no service with name or id '{key}'"))

    upstreams = _items(data.get("upstreams"))
    upstream_names: dict[str, tuple] = {}
    upstream_ids: dict[str, tuple] = {}
    for i, u in upstreams:
        unique(u.get("name"), ("upstreams", i, "name"), upstream_names, "upstream name")
        unique(u.get("id"), ("upstreams", i, "id"), upstream_ids, "upstream id")

    target_ids: dict[str, tuple] = {}
    per_upstream: dict[int, dict[tuple[str, int], tuple]] = {}

    def add_target(upstream_index: int, path: tuple, t: dict[str, Any]) -> None:
        unique(t.get("id"), path + ("id",), target_ids, "target id")
        key = _target_key(t.get("target"))
        if key is None:
            return
        seen = per_upstream.setdefault(upstream_index, {})
        if key in seen:
            issues.append((path + ("target",), f"duplicate target '{t['target']}' in this upstream (already "
                                               f"listed at {where(seen[key])})"))
        else:
            seen[key] = path + ("target",)

    for i, u in upstreams:
        for j, t in _items(u.get("targets")):
            add_target(i, ("upstreams", i, "targets", j), t)
    for i, t in _items(data.get("targets")):
        key = _ref_key(t.get("upstream"))
        if key is None:
            continue
        found = upstream_names.get(key) or upstream_ids.get(key)
        if found is None:
            issues.append((("targets", i, "upstream"), f"no upstream with name or id '{key}'"))
        else:
            add_target(found[1], ("targets", i), t)

    issues += _resilience_issues(services, all_routes, service_names, service_ids)
    issues += _consumer_issues(data, service_names, service_ids, route_names, route_ids)
    issues += _tls_issues(data, services, upstreams, unique)
    return issues


def plugin_entities(data: dict[str, Any]) -> list[tuple[tuple, dict[str, Any], str]]:
    """Every plugin entity in raw config data with its path and its parent kind ('' for top-level ones)."""
    out: list[tuple[tuple, dict[str, Any], str]] = [(("plugins", i), p, "") for i, p in _items(data.get("plugins"))]
    for i, s in _items(data.get("services")):
        out += [(("services", i, "plugins", j), p, "service") for j, p in _items(s.get("plugins"))]
        for j, r in _items(s.get("routes")):
            out += [(("services", i, "routes", j, "plugins", k), p, "route") for k, p in _items(r.get("plugins"))]
    for i, r in _items(data.get("routes")):
        out += [(("routes", i, "plugins", j), p, "route") for j, p in _items(r.get("plugins"))]
    for i, c in _items(data.get("consumers")):
        out += [(("consumers", i, "plugins", j), p, "consumer") for j, p in _items(c.get("plugins"))]
    return out


def _plugin_issues(data: Any, filename: str, lines: Mapping[tuple, int]) -> list[ConfigIssue]:
    """Each plugin's ``config`` against the plugin's own schema (its ``Config`` model), with the field paths."""
    from ..plugins import registry

    if not isinstance(data, dict):
        return []
    issues: list[ConfigIssue] = []
    for path, p, parent in plugin_entities(data):
        name = p.get("name")
        if not isinstance(name, str):
            continue
        try:
            cls = registry.get(name)
        except registry.PluginLoadError as exc:
            issues.append(ConfigIssue(path + ("name",), str(exc), filename, _line(path + ("name",), lines)))
            continue
        if cls is None:
            known = ", ".join(registry.names())
            issues.append(ConfigIssue(path + ("name",), f"unknown plugin '{name}' (available: {known})", filename,
                                      _line(path + ("name",), lines)))
            continue
        if parent and p.get(parent) is not None:
            issues.append(ConfigIssue(path + (parent,), f"a plugin nested under a {parent} must not set '{parent}'",
                                      filename, _line(path + (parent,), lines)))
        config = p.get("config")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            continue  # the entity model reports it
        try:
            cls.Config.model_validate(config)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                loc = path + ("config",) + _clean_loc(tuple(err["loc"]))
                issues.append(ConfigIssue(loc, _message(err, loc), filename, _line(loc, lines)))
    return issues


_CREDENTIALS = ("keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls")


def _consumer_issues(data: dict[str, Any], service_names: dict, service_ids: dict, route_names: dict,
                     route_ids: dict) -> list[tuple[tuple, str]]:
    """Consumers unique by username and custom_id; references to consumers, consumer groups, services and routes
    resolve; a key, a basic-auth username and a JWT key belong to one credential only; one plugin of a name per
    scope."""
    issues: list[tuple[tuple, str]] = []
    consumers = _items(data.get("consumers"))
    seen: dict[str, tuple] = {}
    keys: dict[str, tuple] = {}
    for i, c in consumers:
        for attr in ("username", "custom_id", "id"):
            v = c.get(attr)
            if isinstance(v, str):
                if v in seen:
                    issues.append((("consumers", i, attr), f"duplicate consumer {attr} '{v}'"))
                else:
                    seen[v] = ("consumers", i, attr)
    groups = {v for _, g in _items(data.get("consumer_groups")) for v in (g.get("name"), g.get("id"))
              if isinstance(v, str)}
    for i, c in consumers:
        for j, g in enumerate(c.get("groups") or [] if isinstance(c.get("groups"), list) else []):
            key = _ref_key(g)
            if key is not None and key not in groups:
                issues.append((("consumers", i, "groups", j), f"no consumer group with name or id '{key}'"))
    creds: list[tuple[tuple, str, dict]] = []
    for kind in _CREDENTIALS:
        for i, c in consumers:
            creds += [(("consumers", i, kind, j), kind, x) for j, x in _items(c.get(kind))]
        for i, x in _items(data.get(kind)):
            creds.append(((kind, i), kind, x))
            key = _ref_key(x.get("consumer"))
            if key is not None and key not in seen:
                issues.append(((kind, i, "consumer"), f"no consumer with id, username or custom_id '{key}'"))
    unique_field = {"keyauth_credentials": ("key", "key_hash"), "basicauth_credentials": ("username",),
                    "jwt_secrets": ("key",)}
    for path, kind, x in creds:
        for attr in unique_field.get(kind, ()):
            v = x.get(attr)
            if isinstance(v, str):
                k = f"{kind}:{v}"
                if k in keys:
                    what = "key" if attr in ("key", "key_hash") else attr
                    issues.append((path + (attr,), f"duplicate {kind[:-1].replace('_', ' ')} {what} (already at "
                                                   f"{format_path(keys[k])})"))
                else:
                    keys[k] = path
    scopes: dict[tuple, tuple] = {}
    for path, p, parent in plugin_entities(data):
        name = p.get("name")
        if not isinstance(name, str):
            continue
        refs = {k: _ref_key(p.get(k)) for k in ("service", "route", "consumer")}
        if parent:
            refs[parent] = format_path(path[:-2])  # the parent entity itself
        for kind, known in (("service", (service_names, service_ids)), ("route", (route_names, route_ids)),
                            ("consumer", (seen,))):
            key = refs[kind]
            if not parent or parent != kind:
                if key is not None and not any(key in k for k in known):
                    issues.append((path + (kind,), f"no {kind} with name or id '{key}'"))
        scope = (name, p.get("instance_name"), refs["service"], refs["route"], refs["consumer"])
        if scope in scopes and p.get("enabled", True) is not False:
            issues.append((path + ("name",), f"plugin '{name}' is configured twice for the same scope (already at "
                                             f"{format_path(scopes[scope])})"))
        else:
            scopes[scope] = path
    return issues


_RESILIENCE_FIELDS = ("circuit_breaker", "retry", "bulkhead", "fallback")


def _resilience_issues(services: list, routes: list, names: dict, ids: dict) -> list[tuple[tuple, str]]:
    """Resilience state is kept per service name across reloads, so a service with any of it needs a name; fallback
    and mirror services must exist, and a service cannot fall back to itself."""
    issues: list[tuple[tuple, str]] = []
    for i, s in services:
        used = [k for k in _RESILIENCE_FIELDS if s.get(k) is not None]
        if used and not isinstance(s.get("name"), str):
            issues.append((("services", i, used[0]), f"a service with '{used[0]}' must have a 'name' (its state "
                                                     f"is kept by name across reloads)"))
        fb = s.get("fallback")
        key = _ref_key(fb.get("service")) if isinstance(fb, dict) else None
        if key is not None:
            if key not in names and key not in ids:
                issues.append((("services", i, "fallback", "service"), f"no service with name or id '{key}'"))
            elif key in (s.get("name"), s.get("id")):
                issues.append((("services", i, "fallback", "service"), "a service cannot fall back to itself"))
    for path, r in routes:
        m = r.get("mirror")
        key = _ref_key(m.get("service")) if isinstance(m, dict) else None
        if key is not None and key not in names and key not in ids:
            issues.append((path + ("mirror", "service"), f"no service with name or id '{key}'"))
        for j, sp in _items(r.get("splits")):
            key = _ref_key(sp.get("service"))
            if key is not None and key not in names and key not in ids:
                issues.append((path + ("splits", j, "service"), f"no service with name or id '{key}'"))
    return issues


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _tls_issues(data: dict[str, Any], services: list, upstreams: list, unique) -> list[tuple[tuple, str]]:
    """Certificates (key matches, alternate pair), SNI names unique (nested and top-level together, case-insensitive),
    and references to certificates and CA certificates, which are by id."""
    issues: list[tuple[tuple, str]] = []
    certificates = _items(data.get("certificates"))
    if not certificates and not data.get("snis") and not data.get("ca_certificates"):
        # nothing to check unless a service refers to one
        if not any(s.get("client_certificate") or s.get("ca_certificates") for _, s in services) and not any(
            u.get("client_certificate") for _, u in upstreams
        ):
            return issues
    from ..tls import PemError, ca_digest, cert_key_problems, cert_key_type

    cert_ids: dict[str, tuple] = {}
    for i, c in certificates:
        path = ("certificates", i)
        unique(c.get("id"), path + ("id",), cert_ids, "certificate id")
        cert, key, cert_alt, key_alt = (c.get(k) for k in ("cert", "key", "cert_alt", "key_alt"))
        if isinstance(cert, str) and isinstance(key, str):
            problem = cert_key_problems(cert, key)
            if problem:
                issues.append((path + ("key",), problem))
        if (cert_alt is None) != (key_alt is None):
            present = "cert_alt" if cert_alt is not None else "key_alt"
            issues.append((path + (present,), "'cert_alt' and 'key_alt' must be set together"))
        elif isinstance(cert_alt, str) and isinstance(key_alt, str):
            problem = cert_key_problems(cert_alt, key_alt)
            if problem:
                issues.append((path + ("key_alt",), "alternative " + problem))
            elif isinstance(cert, str):
                kind, kind_alt = cert_key_type(cert), cert_key_type(cert_alt)
                if kind is not None and kind == kind_alt:
                    issues.append((path + ("cert_alt",), f"certificate and alternative certificate need to have "
                                                         f"different types (e.g. RSA and ECDSA): both are {kind}"))

    sni_names: dict[str, tuple] = {}
    sni_ids: dict[str, tuple] = {}

    def add_sni(path: tuple, sni: Any) -> None:
        name = sni if isinstance(sni, str) else sni.get("name") if isinstance(sni, dict) else None
        name_path = path if isinstance(sni, str) else path + ("name",)
        if isinstance(name, str):
            unique(name.lower(), name_path, sni_names, "SNI")
        if isinstance(sni, dict):
            unique(sni.get("id"), path + ("id",), sni_ids, "SNI id")

    for i, c in certificates:
        snis = c.get("snis")
        if isinstance(snis, list):
            for j, sni in enumerate(snis):
                add_sni(("certificates", i, "snis", j), sni)
    for i, sni in _items(data.get("snis")):
        add_sni(("snis", i), sni)
        key = _ref_key(sni.get("certificate"))
        if key is not None and key not in cert_ids:
            issues.append((("snis", i, "certificate"), f"no certificate with id '{key}'"))

    ca_ids: dict[str, tuple] = {}
    for i, ca in _items(data.get("ca_certificates")):
        unique(ca.get("id"), ("ca_certificates", i, "id"), ca_ids, "CA certificate id")
        digest, cert = ca.get("cert_digest"), ca.get("cert")
        if isinstance(digest, str) and isinstance(cert, str):
            try:
                actual = ca_digest(cert)
            except PemError:
                continue
            if digest.lower() != actual:
                issues.append((("ca_certificates", i, "cert_digest"),
                               f"does not match the certificate (its sha256 is {actual})"))

    for kind, entities in (("services", services), ("upstreams", upstreams)):
        for i, e in entities:
            key = _ref_key(e.get("client_certificate"))
            if key is not None and key not in cert_ids:
                issues.append(((kind, i, "client_certificate"), f"no certificate with id '{key}'"))
    for i, s in services:
        cas = s.get("ca_certificates")
        if isinstance(cas, list):
            for j, ref in enumerate(cas):
                if isinstance(ref, str) and _is_uuid(ref) and ref not in ca_ids:  # a bad id has its own error
                    issues.append((("services", i, "ca_certificates", j), f"no CA certificate with id '{ref}'"))
    return issues

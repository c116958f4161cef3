"""Helpers shared by the traffic plugins (cors, ip-restriction, the transformers, ...): config checks with Kong's
messages, ``name:value`` pairs, and an ordered query-string / form editor that keeps untouched arguments as sent.

Everything here runs at build time, except ``ArgOps.apply`` (per request, only for configs that have argument ops).
"""

from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import quote, unquote_plus

from pydantic import model_validator

from .base import PluginConfig

# Kong's typedefs.header_name / kong.tools.http.validate_header_name
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\0]")


class Record(PluginConfig):
    """A Kong config record: an explicit ``null`` means "the default" (as Kong's declarative config reads it)."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(v is None for v in data.values()):
            fields = cls.model_fields
            data = {k: v for k, v in data.items()
                    if not (v is None and k in fields and fields[k].default is not None)}
        return data


def check_header_name(name: str) -> str:
    """Kong's typedefs.header_name rule and message."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise ValueError(f"bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'")
    return name


def valid_header_name(name: str) -> bool:
    return bool(_HEADER_NAME.match(name))


def valid_header_value(value: str) -> bool:
    if _BAD_VALUE.search(value):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def split_pair(entry: str) -> tuple[str, str]:
    """Kong's ``^([^:]+):*(.-)$``: the name is up to the first colon, then every colon that follows is skipped.
    ``"a:b:c"`` -> ``("a", "b:c")``, ``"a"`` -> ``("a", "")``."""
    name, sep, rest = entry.partition(":")
    return name, rest.lstrip(":") if sep else ""


def pairs(entries: Iterable[str], *, what: str, need_value: bool = True, header_names: bool = False,
          header_values: bool = False, templates: bool = False) -> tuple[str, ...]:
    """Validate a list of ``name:value`` entries (or plain names when ``need_value`` is false)."""
    out = []
    for entry in entries:
        if not isinstance(entry, str) or not entry or entry.startswith(":"):
            raise ValueError(f"{what}: invalid entry {entry!r}")
        name, value = split_pair(entry)
        if need_value and value == "":
            raise ValueError(f"key '{name}' has no value")
        if header_names:
            if not valid_header_name(name):
                raise ValueError(f"'{name}' is not a valid header")
            if need_value and header_values and not valid_header_value(value):
                raise ValueError(f"'{value}' is not a valid header")
            if need_value and not header_values and not valid_header_name(value):
                raise ValueError(f"'{value}' is not a valid header")
        if templates and "$(" in value:
            raise ValueError(f"'{entry}': templates are not supported yet")
        out.append(entry)
    return tuple(out)


def parsed(entries: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple(split_pair(e) for e in entries)


# ---------------------------------------------------------------------------------------------------------------------
# ordered arguments (query strings, x-www-form-urlencoded bodies)
# ---------------------------------------------------------------------------------------------------------------------
def _enc(name: str, value: str | None) -> str:
    n = quote(name, safe="")
    return n if value is None else n + "=" + quote(value, safe="")


def _name_of(raw: str) -> str:
    i = raw.find("=")
    return unquote_plus(raw if i < 0 else raw[:i])


class ArgOps:
    """Kong's remove / rename / replace / add / append over ``name=value`` arguments, keeping their order and the
    exact encoding of the arguments no operation touched.

    - remove: every argument of that name;
    - rename ``old:new``: when ``old`` is present, its arguments take the name ``new`` (replacing any ``new``);
    - replace ``name:value``: when present, one ``name=value`` where the first one was;
    - add ``name:value``: when absent, appended;
    - append ``name:value``: always appended (a repeated name is how a list is sent).
    """

    __slots__ = ("remove", "rename", "replace", "add", "append", "empty")

    def __init__(self, remove: Iterable[str], rename: Iterable[tuple[str, str]],
                 replace: Iterable[tuple[str, str]], add: Iterable[tuple[str, str]],
                 append: Iterable[tuple[str, str]]) -> None:
        self.remove = frozenset(remove)
        self.rename = tuple((o, n, quote(n, safe="")) for o, n in rename)
        self.replace = tuple((n, _enc(n, v)) for n, v in replace)
        self.add = tuple((n, _enc(n, v)) for n, v in add)
        self.append = tuple(_enc(n, v) for n, v in append)
        self.empty = not (self.remove or self.rename or self.replace or self.add or self.append)

    def apply(self, raw: str) -> str | None:
        """``raw`` without a leading '?'. Returns the new string, or None when nothing changed."""
        items = [(_name_of(p), p) for p in raw.split("&") if p] if raw else []
        changed = False
        if self.remove:
            kept = [it for it in items if it[0] not in self.remove]
            if len(kept) != len(items):
                items, changed = kept, True
        for old, new, new_enc in self.rename:
            if old == new or not any(it[0] == old for it in items):
                continue
            out = []
            for name, p in items:
                if name == new:
                    continue
                if name == old:
                    i = p.find("=")
                    p = new_enc if i < 0 else new_enc + p[i:]
                    name = new
                out.append((name, p))
            items, changed = out, True
        for name, enc in self.replace:
            idx = [i for i, it in enumerate(items) if it[0] == name]
            if idx:
                first = idx[0]
                items = [it for i, it in enumerate(items) if i == first or it[0] != name]
                items[first] = (name, enc)
                changed = True
        for name, enc in self.add:
            if not any(it[0] == name for it in items):
                items.append((name, enc))
                changed = True
        if self.append:
            items.extend((None, enc) for enc in self.append)  # type: ignore[misc]
            changed = True
        if not changed:
            return None
        return "&".join(p for _, p in items)


def parse_args(raw: str) -> dict[str, Any]:
    """Kong's ``get_query`` / form shape: name -> value, ``True`` for a bare name, a list for a repeated one."""
    out: dict[str, Any] = {}
    for p in raw.split("&"):
        if not p:
            continue
        k, sep, v = p.partition("=")
        name = unquote_plus(k)
        value: Any = unquote_plus(v) if sep else True
        if name in out:
            cur = out[name]
            if isinstance(cur, list):
                cur.append(value)
            else:
                out[name] = [cur, value]
        else:
            out[name] = value
    return out


def has_arg(raw: bytes, name: str) -> bool:
    """Whether a query string (with or without its '?') has an argument of this name."""
    if not raw:
        return False
    s = raw.decode("latin-1")
    if s[0] == "?":
        s = s[1:]
    for p in s.split("&"):
        k = p.partition("=")[0]
        if k == name or ("%" in k or "+" in k) and unquote_plus(k) == name:
            return True
    return False


def apply_header_ops(h: Any, remove: Iterable[str], rename: Iterable[tuple[str, str]],
                     replace: Iterable[tuple[str, str]], add: Iterable[tuple[str, str]],
                     append: Iterable[tuple[str, str]]) -> None:
    """Kong's transformer order on a ``Headers``: remove, rename, replace (only if present), add (only if absent),
    append (always). Shared by request-transformer and response-transformer."""
    for name in remove:
        h.remove(name)
    for old, new in rename:
        values = h.get_all(old)
        if values:
            h.remove(old)
            h.remove(new)
            for v in values:
                h.add(new, v)
    for name, value in replace:
        if name in h:
            h.set(name, value)
    for name, value in add:
        if name not in h:
            h.add(name, value)
    for name, value in append:
        h.add(name, value)

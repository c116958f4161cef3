"""Route regexes as Kong users write them -> Python ``re``.

Kong 3.x (``traditional_compatible``) hands a route's regex path to the Rust ``regex`` crate after
turning ``(?<name>`` into ``(?P<name>`` and prefixing ``^``.  So the syntax users actually write is
PCRE-looking Rust syntax.  This module translates the few constructs Python 3.11 spells differently:

* named groups ``(?<name>...)``  -> ``(?P<name>...)`` (lookbehinds ``(?<=`` / ``(?<!`` are left alone);
* inline flags in the middle of a pattern, ``/a/(?i)b``: Python 3.11 only accepts global flags at the
  very start, so the flag is turned into a scoped group running to the end of the enclosing group
  (re-opened after each ``|`` of that group, as Rust keeps the flag for the following alternatives);
  Rust's ``u`` flag is dropped (Python ``str`` patterns are Unicode already), ``-u`` becomes ``a``;
* ``\\z`` (end of text) -> ``\\Z``.

Everything else is passed through.  It is private: the config team's ``translate_regex`` may
replace it once it exists.
"""

from __future__ import annotations

import re

__all__ = ["translate_regex", "literal_prefix"]

_FLAGS_RE = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")
_PY_SCOPED = set("imsx")


def _py_flags(on: str, off: str, pattern: str) -> str:
    on_out = []
    off_out = []
    for f in on:
        if f in _PY_SCOPED:
            on_out.append(f)
        elif f == "u":
            continue
        else:
            raise ValueError(f"unsupported regex flag {f!r} in {pattern!r}")
    for f in off:
        if f in _PY_SCOPED:
            off_out.append(f)
        elif f == "u":
            on_out.append("a")
        else:
            raise ValueError(f"unsupported regex flag {f!r} in {pattern!r}")
    s = "".join(on_out)
    if off_out:
        s += "-" + "".join(off_out)
    return s


def _class_end(p: str, i: int) -> int:
    """Index just past the character class opening at ``p[i] == '['`` (nested classes allowed)."""
    n = len(p)
    j = i + 1
    if j < n and p[j] == "^":
        j += 1
    if j < n and p[j] == "]":
        j += 1
    depth = 1
    while j < n:
        c = p[j]
        if c == "\\":
            j += 2
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return n  # unterminated: let re.compile report it


def translate_regex(pattern: str) -> str:
    """Translate a Kong route regex (without the leading ``~``) to Python ``re`` syntax."""
    out: list[str] = []
    # one entry per open group: the scoped-flag wrappers opened by ``(?flags)`` inside that group
    stack: list[list[str]] = [[]]
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 < n:
                nx = pattern[i + 1]
                out.append("\\Z" if nx == "z" else c + nx)
                i += 2
            else:
                out.append(c)
                i += 1
            continue
        if c == "[":
            j = _class_end(pattern, i)
            out.append(pattern[i:j])
            i = j
            continue
        if c == "(":
            if pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
                out.append("(?P<")
                stack.append([])
                i += 3
                continue
            m = _FLAGS_RE.match(pattern, i)
            if m is not None:
                flags = _py_flags(m.group(1), m.group(2) or "", pattern)
                if m.group(3) == ")":  # flags for the rest of the enclosing group
                    if flags:
                        out.append("(?" + flags + ":")
                        stack[-1].append(flags)
                else:  # scoped group (?flags:...)
                    out.append("(?" + flags + ":")
                    stack.append([])
                i = m.end()
                continue
            out.append(c)
            stack.append([])
            i += 1
            continue
        if c == ")":
            opened = stack.pop() if len(stack) > 1 else []
            out.append(")" * len(opened))
            out.append(")")
            i += 1
            continue
        if c == "|":
            opened = stack[-1]
            out.append(")" * len(opened))
            out.append("|")
            out.extend("(?" + f + ":" for f in opened)
            i += 1
            continue
        out.append(c)
        i += 1
    while stack:
        out.append(")" * len(stack.pop()))
    return "".join(out)


_META = frozenset(".^$*+?()[]{}|\\")


def _has_top_level_alternation(p: str) -> bool:
    depth = 0
    i = 0
    n = len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(p, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth <= 0:
            return True
        i += 1
    return False


def literal_prefix(pattern: str) -> str:
    """A string every path matched by ``^`` + ``pattern`` starts with ("" when unsure).

    Used only to index regex routes; an empty answer is always safe.
    """
    if _has_top_level_alternation(pattern):  # such an alternative is not anchored by the prepended ``^``
        return ""
    i = 0
    n = len(pattern)
    while i < n and pattern[i] == "^":
        i += 1
    lit: list[str] = []
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 < n and pattern[i + 1].isascii() and not pattern[i + 1].isalnum():
                lit.append(pattern[i + 1])
                i += 2
                continue
            break
        if c in _META:
            break
        if c.isspace() or c == "#":  # could be verbose-mode syntax: stop being clever
            break
        lit.append(c)
        i += 1
    if i < n and pattern[i] in "*?{" and lit:
        lit.pop()  # the quantifier makes the last literal optional
    return "".join(lit)

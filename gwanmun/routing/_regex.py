"""Regex helpers for indexing regex routes (translation to Python lives in ``gwanmun.config.model``)."""

from __future__ import annotations

__all__ = ["literal_prefix"]

_META = frozenset(".^$*+?()[]{}|\\")


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
    return n


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

    ``pattern`` is the route's regex without its ``~``.  Used only to index regex routes: an empty
    answer is always safe.
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

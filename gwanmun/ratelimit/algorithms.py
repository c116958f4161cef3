"""The three rate-limit algorithms, as pure steps over a small state, so the local store, the tests (with a fake
clock) and the Redis script (``redis_store.SCRIPT``, the same arithmetic in Lua) share one definition.

State: three floats ``(w, a, b)``; a fresh key is ``(-1, 0, 0)``.

- **fixed** (Kong's): ``w`` is the window index, ``a`` the requests admitted in it. A request is admitted while
  ``a + 1 <= limit``. Exact: a window admits ``limit`` requests, never more (but up to ``2 * limit`` can pass within
  ``size`` seconds across a boundary: the classic burst).
- **sliding** (the default): the two-window weighted counter. ``a`` counts the current window, ``b`` the previous
  one; the estimate of the last ``size`` seconds is ``b * (1 - elapsed / size) + a``, and a request is admitted while
  ``estimate + 1 <= limit``. No boundary burst; within a window it admits exactly what the estimate allows.
- **gcra** (a token bucket, as the Generic Cell Rate Algorithm): ``w`` is the theoretical arrival time. With the
  emission interval ``T = size / limit``, a request is admitted when ``max(w, now) + T - now <= size``: a burst of
  ``limit`` requests, then one every ``T`` seconds.

A step returns ``(ok, w, a, b, expires, remaining, reset, retry)``: the new state (stored only when every period of the
request admits it), when the stored state stops mattering (the slot's expiry), the requests left after this one,
the seconds until the period's quota is whole again (``RateLimit``'s ``t``), and for a refusal the seconds until a
request would be admitted (``Retry-After``).
"""

from __future__ import annotations

from math import floor
from typing import Final

Step = tuple[bool, float, float, float, float, float, float, float]
EPS = 1e-3  # in emission intervals: absorbs float rounding of accumulated arrival times, far below one request


def fixed(w: float, a: float, b: float, now: float, idx: float, start: float, size: float, limit: float) -> Step:
    end = start + size
    if w < idx:  # an older window, or a fresh key (a clock that went back keeps the newer window's count)
        a = 0.0
    if a + 1.0 <= limit:
        a += 1.0
        return True, idx, a, 0.0, end, limit - a, end - now, 0.0
    return False, idx, a, 0.0, end, 0.0, end - now, end - now


def sliding(w: float, a: float, b: float, now: float, idx: float, start: float, size: float, limit: float) -> Step:
    if w < idx:
        if w == idx - 1.0:
            b, a = a, 0.0
        else:
            b = a = 0.0
    end = start + size
    elapsed = now - start
    weight = 1.0 - elapsed / size
    est = b * weight + a
    if est + 1.0 <= limit:
        a += 1.0
        left = limit - est - 1.0
        return True, idx, a, b, end + size, floor(left) if left > 0 else 0.0, end - now, 0.0
    # refused: when does the estimate leave room for one more?
    if a + 1.0 <= limit:  # within this window, once the previous window's weight has decayed enough
        retry = size * (1.0 - (limit - 1.0 - a) / b) - elapsed if b > 0 else 0.0
    elif a > 0:  # only in the next window, once this window (then the previous one) has decayed enough
        retry = (end - now) + size * max(0.0, 1.0 - (limit - 1.0) / a)
    else:  # a limit below one request
        retry = end - now + size
    return False, idx, a, b, end + size, 0.0, end - now, max(retry, 0.0)


def gcra(w: float, a: float, b: float, now: float, idx: float, start: float, size: float, limit: float) -> Step:
    interval = size / limit
    tat = w if w > now else now
    new = tat + interval
    if new - now <= size + interval * EPS:
        left = (size - (new - now)) / interval + EPS
        return True, new, 0.0, 0.0, new, floor(left) if left > 0 else 0.0, new - now, 0.0
    return False, w, 0.0, 0.0, tat, 0.0, tat - now, new - size - now


ALGORITHMS = {"fixed": fixed, "sliding": sliding, "gcra": gcra}
FIXED: Final = 0
SLIDING: Final = 1
GCRA: Final = 2
CODES: Final = {"fixed": FIXED, "sliding": SLIDING, "gcra": GCRA}  # for shared.Table.hit1


def code_of(step: object) -> int:
    """The number of one of the three step functions (``CODES``), or -1 for another callable (tests)."""
    if step is fixed:
        return FIXED
    if step is sliding:
        return SLIDING
    if step is gcra:
        return GCRA
    return -1

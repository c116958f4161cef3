"""Rate-limit periods (Kong's names) and their windows.

``second``, ``minute``, ``hour`` and ``day`` are fixed lengths aligned on the Unix epoch (so a day starts at 00:00
UTC); ``month`` and ``year`` are calendar months and years in UTC, as Kong counts them. A window is
``(index, start, size)``: consecutive windows have consecutive indexes (a month's index is ``year * 12 + month - 1``),
which is what the sliding window needs to find "the previous one".

The calendar arithmetic (``civil`` / ``days_from_civil``: days since 1970-01-01 <-> proleptic Gregorian dates) is the
same integer formula the Redis script runs, so both stores agree on every boundary.
"""

from __future__ import annotations

from math import floor

ORDER = ("second", "minute", "hour", "day", "month", "year")
SIZES = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
MONTH = -1.0  # ``kind`` of the calendar periods (the Redis script gets the same codes)
YEAR = -2.0
KINDS = {**SIZES, "month": MONTH, "year": YEAR}
NOMINAL = {**SIZES, "month": 2592000.0, "year": 31536000.0}  # Kong's EXPIRATIONS: for RateLimit-Policy's w


def civil(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 -> (year, month, day)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def days_from_civil(y: int, m: int, d: int) -> int:
    """(year, month, day) -> days since 1970-01-01."""
    y -= 1 if m <= 2 else 0
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + 9 if m <= 2 else m - 3) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def calendar_window(kind: float, now: float) -> tuple[float, float, float]:
    """(index, start, size) of the calendar month (``MONTH``) or year (``YEAR``) holding ``now``."""
    y, m, _ = civil(floor(now / 86400.0))
    if kind == MONTH:
        start = days_from_civil(y, m, 1) * 86400.0
        ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
        return float(y * 12 + m - 1), start, days_from_civil(ny, nm, 1) * 86400.0 - start
    start = days_from_civil(y, 1, 1) * 86400.0
    return float(y), start, days_from_civil(y + 1, 1, 1) * 86400.0 - start


class Period:
    """One configured limit: a period name, its limit, and how to find its window at a time."""

    def __init__(self, name: str, limit: float, salt: int = 0) -> None:
        self.name = name
        self.limit = float(limit)
        self.kind = KINDS[name]
        self.size = SIZES.get(name, 0.0)  # 0: calendar
        self.salt = salt  # mixed into the key hash: one counter per (key, period)
        self._cal = (0.0, 0.0, -1.0)  # calendar cache: (index, start, end)

    def window(self, now: float) -> tuple[float, float, float]:
        size = self.size
        if size:
            idx = now // size
            return idx, idx * size, size
        idx, start, end = self._cal
        if not start <= now < end:
            idx, start, size = calendar_window(self.kind, now)
            end = start + size
            self._cal = (idx, start, end)
        return idx, start, end - start

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Period({self.name!r}, {self.limit:g})"

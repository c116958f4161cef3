"""Shared memory from the workers to the supervisor: one region per worker position, made before the fork.

Each worker copies a snapshot of its counters into its own region once a second (``publish.PUBLISH_INTERVAL``);
the supervisor reads every region when ``/metrics`` or ``/status`` is asked for and sums them. A region is an
anonymous ``MAP_SHARED`` mapping, so nothing touches the disk and untouched pages cost no memory.

Layout of a region: ``[seq: u64][length: u64][payload]``. The writer is a seqlock writer: it makes ``seq`` odd,
writes the payload and its length, then makes ``seq`` even again; a reader copies the payload and keeps it only if
``seq`` was even and unchanged around the copy (it retries otherwise). So a reader never sees half a snapshot, and
neither side ever waits for the other: a worker never blocks on the supervisor.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time

log = logging.getLogger("gwanmun")

HEADER = struct.Struct("=QQ")
REGION_SIZE = int(os.environ.get("GWANMUN_METRICS_REGION", 8 << 20))  # bytes per worker (address space)

_regions: Regions | None = None


class Regions:
    def __init__(self, count: int, size: int = REGION_SIZE) -> None:
        self.count = count
        self.size = size
        self.buf = mmap.mmap(-1, max(1, count) * size)  # anonymous: MAP_SHARED, inherited by forked workers
        self.too_big_logged = False

    def write(self, index: int, payload: bytes) -> bool:
        if not 0 <= index < self.count:
            return False
        n = len(payload)
        if n > self.size - HEADER.size:
            if not self.too_big_logged:
                self.too_big_logged = True
                log.warning("metrics snapshot too large", extra={"fields": {
                    "event": "metrics_snapshot_too_large", "bytes": n, "limit": self.size - HEADER.size,
                    "hint": "raise GWANMUN_METRICS_REGION (bytes per worker), or lower the number of label values"}})
            return False
        base = index * self.size
        buf = self.buf
        seq = HEADER.unpack_from(buf, base)[0]
        if seq & 1:
            seq += 1  # a writer died in the middle: start from an even number again
        HEADER.pack_into(buf, base, seq + 1, 0)
        buf[base + HEADER.size: base + HEADER.size + n] = payload
        HEADER.pack_into(buf, base, seq + 2, n)
        return True

    def read(self, index: int, tries: int = 200) -> bytes | None:
        """The last payload written to region ``index``; None if none was written yet (or it kept changing)."""
        if not 0 <= index < self.count:
            return None
        base = index * self.size
        buf = self.buf
        for i in range(tries):
            seq, n = HEADER.unpack_from(buf, base)
            if seq == 0:
                return None
            if seq & 1 or n > self.size - HEADER.size:
                time.sleep(0.0005 if i > 10 else 0)
                continue
            data = buf[base + HEADER.size: base + HEADER.size + n]
            if HEADER.unpack_from(buf, base)[0] == seq:
                return data
        return None

    def clear(self, index: int) -> None:
        if 0 <= index < self.count:
            HEADER.pack_into(self.buf, index * self.size, 0, 0)


def create(count: int, size: int = REGION_SIZE) -> Regions:
    """In the supervisor, before forking: one region per worker position."""
    global _regions
    _regions = Regions(count, size)
    return _regions


def regions() -> Regions | None:
    return _regions

"""The last known good config: each node's copy, on its own disk, of the newest version it has served.

Written (to a temporary file, fsync'ed, then renamed over the old copy) every time the node applies a version from
its store, so it is always a complete version that validated. When the store cannot be reached at start-up, the node
serves this copy and keeps trying the store. The file is JSON: the version's metadata and its flat document.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .base import Version


class LastKnownGood:
    def __init__(self, path: str) -> None:
        self.path = path

    def save(self, version: Version, store: str) -> None:
        data: dict[str, Any] = {"saved_at": round(time.time(), 3), "store": store, **version.to_json()}
        tmp = f"{self.path}.tmp.{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold credentials
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"), ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def load(self) -> tuple[Version, dict[str, Any]] | None:
        """The saved version and the whole record (``saved_at``, ``store``), or None if there is none usable."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            v = Version.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(v.doc, dict):
            return None
        return v, data

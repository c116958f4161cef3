"""Config errors.

``ConfigError``: a config was rejected. It carries every problem found, each with its field path and, where the
source is a file, the line, so `gwanmun validate` can list them all at once. (Request errors are answered by
``proxy.Exchange.fail`` as JSON bodies with the request id.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """``('services', 0, 'routes', 1, 'paths')`` -> ``services[0].routes[1].paths``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(("." if out else "") + str(part))
    return "".join(out) or "<root>"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config: where (field path, file, line) and why."""

    path: Path
    message: str
    file: str | None = None
    line: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {format_path(self.path)}: {self.message}"


@dataclass
class ConfigError(Exception):
    """A config was rejected; ``issues`` lists every problem found, not just the first."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues) or "invalid config"

"""The pid file: where ``gwanmun reload`` finds the running supervisor.

The supervisor writes its pid (one decimal line, as nginx and systemd's ``PIDFile=`` expect) when it has bound its
listeners, and removes the file when it exits, unless another gateway has taken the path over meanwhile.
"""

from __future__ import annotations

import os
import tempfile

DEFAULT_NAME = "gwanmun.pid"


class PidFileError(Exception):
    pass


def default_path() -> str:
    """``$XDG_RUNTIME_DIR/gwanmun.pid`` (a per-user directory only its owner can write), else
    ``/tmp/gwanmun-<uid>.pid``."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, DEFAULT_NAME)
    return os.path.join(tempfile.gettempdir(), f"gwanmun-{os.getuid()}.pid")


def resolve(setting: str | None, override: str | None = None) -> str | None:
    """The pid file path from ``gateway.pid_file`` and ``--pid-file`` (which wins); None for ``off``."""
    value = override if override is not None else setting
    if value == "off":
        return None
    return os.path.abspath(value) if value else default_path()


def read(path: str) -> int:
    try:
        with open(path) as f:
            text = f.read(64)
    except FileNotFoundError:
        raise PidFileError(f"no pid file at {path}: is gwanmun running (with this pid file)?") from None
    except OSError as e:
        raise PidFileError(f"cannot read pid file {path}: {e.strerror or e}") from None
    text = text.strip()
    if not text.isdigit() or int(text) <= 1:
        raise PidFileError(f"pid file {path} does not hold a process id (it holds {text[:20]!r})")
    return int(text)


def is_gwanmun(pid: int) -> bool | None:
    """Whether process ``pid`` runs gwanmun, from its command line; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return False if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    return b"gwanmun" in cmdline


def find_running(path: str) -> int:
    """The pid of the gateway that wrote ``path``, checked to be a live gwanmun process owned by this user."""
    pid = read(path)
    try:
        owner = os.stat(path).st_uid
    except OSError:
        owner = os.getuid()
    if owner not in (os.getuid(), 0):
        raise PidFileError(f"pid file {path} belongs to another user (uid {owner}); not trusting it")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise PidFileError(f"stale pid file {path}: process {pid} is not running") from None
    except PermissionError:
        raise PidFileError(f"process {pid} (from {path}) belongs to another user") from None
    if is_gwanmun(pid) is False:
        raise PidFileError(f"stale pid file {path}: process {pid} is not gwanmun")
    return pid


def write(path: str, pid: int) -> int | None:
    """Write ``pid`` to ``path`` atomically (a private temporary file renamed over it, so a reader never sees a
    partial file and a symlink at ``path`` is replaced, not followed). Returns the pid of another live gwanmun the
    file named before, if any."""
    previous = None
    try:
        previous = find_running(path)
    except PidFileError:
        pass
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gwanmun-pid-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return previous if previous != pid else None


def remove(path: str, pid: int) -> None:
    """Remove ``path`` if it still holds ``pid``."""
    try:
        if read(path) == pid:
            os.unlink(path)
    except (PidFileError, OSError):
        pass

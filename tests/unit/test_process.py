"""The process model's pure parts: reload classification, backoff, exit reasons, pid file, config watcher, control
channel framing, the CLI's --workers, and the preflight check of a candidate config."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time

import pytest

from gwanmun.cli import _workers
from gwanmun.config import load_text
from gwanmun.config.model import GatewayConfig
from gwanmun.errors import ConfigError
from gwanmun.process import channel, pidfile
from gwanmun.process.reload import (
    LIVE_FIELDS,
    RESTART_FIELDS,
    ConfigWatcher,
    prepare,
    resolve_workers,
    restart_needed,
)
from gwanmun.process.supervisor import BACKOFF_CAP, backoff, describe_exit


# -- what a reload applies -------------------------------------------------------------------------------------------


def test_every_gateway_field_is_classified_for_reload():
    """A new gateway field must say whether a reload applies it (LIVE_FIELDS) or needs a restart (RESTART_FIELDS):
    otherwise a reload would silently ignore it."""
    fields = set(GatewayConfig.model_fields)
    assert not set(RESTART_FIELDS) & set(LIVE_FIELDS)
    missing = fields - set(RESTART_FIELDS) - set(LIVE_FIELDS)
    assert not missing, f"classify these gateway fields in gwanmun/process/reload.py: {sorted(missing)}"


def _gw(**kw) -> GatewayConfig:
    return GatewayConfig.model_validate(kw)


def test_restart_needed_lists_changed_restart_fields_only():
    running = _gw(listen=["127.0.0.1:8000"], workers=2)
    new = _gw(listen=["127.0.0.1:9000"], workers=3, via_header=False, access_log="off")
    out = restart_needed(running, new, overrides={})
    assert set(out) == {"listen", "workers"}
    assert out["listen"] == {"running": ["127.0.0.1:8000"], "configured": ["127.0.0.1:9000"]}
    assert out["workers"] == {"running": 2, "configured": 3}


def test_restart_needed_compares_effective_values_and_skips_command_line_overrides():
    cpus = resolve_workers("auto")
    assert restart_needed(_gw(workers="auto"), _gw(workers=cpus), overrides={}) == {}
    assert restart_needed(_gw(workers=1), _gw(workers=4), overrides={"workers": 1}) == {}
    assert restart_needed(_gw(), _gw(pid_file=pidfile.default_path()), overrides={}) == {}
    assert "pid_file" in restart_needed(_gw(), _gw(pid_file="off"), overrides={})


def test_resolve_workers():
    assert resolve_workers(3) == 3
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value, ok", [("auto", "auto"), ("1", 1), ("16", 16), ("0", None), ("-1", None),
                                       ("two", None), ("1.5", None), ("1025", None)])
def test_cli_workers_option(value, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            _workers(value)
    else:
        assert _workers(value) == ok


# -- restarts --------------------------------------------------------------------------------------------------------


def test_backoff_is_immediate_then_doubles_to_a_cap():
    delays = [backoff(n) for n in range(1, 12)]
    assert delays[:4] == [0.0, 0.1, 0.2, 0.4]
    assert all(b >= a for a, b in zip(delays, delays[1:]))
    assert max(delays) == BACKOFF_CAP == delays[-1]


def _status_of(action) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def test_describe_exit_from_real_wait_statuses():
    assert describe_exit(_status_of(lambda: os._exit(3))) == {"exit_code": 3, "reason": "exited with code 3"}
    assert describe_exit(_status_of(lambda: os._exit(0)))["exit_code"] == 0
    killed = describe_exit(_status_of(lambda: os.kill(os.getpid(), signal.SIGKILL)))
    assert killed == {"signal": "SIGKILL", "reason": "killed by SIGKILL"}


# -- pid file --------------------------------------------------------------------------------------------------------


def test_pid_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "gw.pid")
    with pytest.raises(pidfile.PidFileError, match="no pid file"):
        pidfile.read(path)
    assert pidfile.write(path, 4242) is None
    assert open(path).read() == "4242\n"
    assert pidfile.read(path) == 4242
    pidfile.remove(path, 1234)  # not ours: kept
    assert os.path.exists(path)
    pidfile.remove(path, 4242)
    assert not os.path.exists(path)

    open(path, "w").write("garbage\n")
    with pytest.raises(pidfile.PidFileError, match="does not hold a process id"):
        pidfile.read(path)


def test_find_running_rejects_dead_and_foreign_processes(tmp_path):
    path = str(tmp_path / "gw.pid")
    dead = os.fork()
    if dead == 0:  # pragma: no cover
        os._exit(0)
    os.waitpid(dead, 0)
    pidfile.write(path, dead)
    with pytest.raises(pidfile.PidFileError, match="not running"):
        pidfile.find_running(path)
    pidfile.write(path, os.getppid() if os.getppid() > 1 else os.getpid())  # alive, but not gwanmun
    if pidfile.is_gwanmun(pidfile.read(path)) is False:
        with pytest.raises(pidfile.PidFileError, match="not gwanmun"):
            pidfile.find_running(path)


def test_pid_file_replaces_a_symlink_instead_of_following_it(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "gw.pid"
    link.symlink_to(target)
    pidfile.write(str(link), 77)
    assert target.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "77\n"


def test_pid_file_resolution(tmp_path):
    assert pidfile.resolve("off") is None
    assert pidfile.resolve(None) == pidfile.default_path()
    assert pidfile.resolve("x.pid") == os.path.abspath("x.pid")
    assert pidfile.resolve("/a.pid", override="/b.pid") == "/b.pid"
    assert pidfile.resolve("/a.pid", override="off") is None


# -- config watcher --------------------------------------------------------------------------------------------------


def test_watcher_sees_content_changes_not_touches(tmp_path, monkeypatch):
    monkeypatch.setattr(ConfigWatcher, "RECENT", 0.0)  # only the stat decides when to hash
    f = tmp_path / "kong.yml"
    f.write_text("a: 1\n")
    w = ConfigWatcher(str(f))
    assert w.poll() is None
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched: same bytes
    assert w.poll() is None
    f.write_text("a: 2\n")
    assert w.poll() == "changed"
    assert w.poll() is None
    f.unlink()
    assert w.poll() == "missing"
    assert w.poll() is None  # said once
    f.write_text("a: 3\n")
    assert w.poll() == "changed"


def test_watcher_rehashes_a_recently_modified_file(tmp_path):
    """Two writes within one mtime tick (coarse timestamps) are still noticed while the file is recent."""
    f = tmp_path / "kong.yml"
    f.write_text("a: 1\n")
    w = ConfigWatcher(str(f))
    st = f.stat()
    f.write_text("a: 2\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime and size as the baseline
    assert w.poll() == "changed"


def test_watcher_sync_takes_the_current_file_as_baseline(tmp_path):
    f = tmp_path / "kong.yml"
    f.write_text("a: 1\n")
    w = ConfigWatcher(str(f))
    f.write_text("a: 2\n")
    w.sync()  # a SIGHUP reload loaded this content already
    assert w.poll() is None


# -- control channel -------------------------------------------------------------------------------------------------


def test_decoder_reassembles_messages_split_anywhere():
    data = channel.encode(("ready", 1)) + channel.encode(("applied", 2, "abc")) + channel.encode(("x", b"y" * 5000))
    for step in (1, 3, 7, 4096):
        d = channel.Decoder()
        out = []
        for i in range(0, len(data), step):
            out += [channel.decode(p) for p in d.feed(data[i : i + step])]
        assert out == [("ready", 1), ("applied", 2, "abc"), ("x", b"y" * 5000)]


def test_decoder_rejects_a_huge_length():
    with pytest.raises(ValueError):
        channel.Decoder().feed(channel.HEADER.pack(channel.MAX_MESSAGE + 1))


def test_outbox_sends_only_the_newest_config_not_a_backlog():
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        box = channel.Outbox()
        big = channel.encode(("config", 1, b"1" * 1_000_000))
        box.put(big)
        box.flush(a)  # partly sent: the socket buffer is small and nobody reads
        assert box.pending
        box.put(channel.encode(("config", 2, b"2")))
        box.put(channel.encode(("config", 3, b"3")))  # replaces 2, which had not started
        got = []
        d = channel.Decoder()
        b.settimeout(5)
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            box.flush(a)
            got += [channel.decode(p) for p in d.feed(b.recv(1 << 20))]
        assert [m[1] for m in got] == [1, 3]
        assert not box.pending
    finally:
        a.close()
        b.close()


# -- preflight -------------------------------------------------------------------------------------------------------


def test_prepare_rejects_an_access_log_that_cannot_be_opened(tmp_path):
    cfg = tmp_path / "kong.yml"
    cfg.write_text('_format_version: "3.0"\ngateway:\n  access_log: /nonexistent-dir/access.log\n')
    with pytest.raises(ConfigError) as ei:
        prepare(str(cfg))
    (issue,) = ei.value.issues
    assert issue.path == ("gateway", "access_log") and issue.line == 3
    assert "cannot open '/nonexistent-dir/access.log'" in issue.message
    assert str(ei.value).startswith(f"{cfg}:3: gateway.access_log: cannot open")


def test_prepare_returns_a_compiled_runtime(tmp_path):
    cfg = tmp_path / "kong.yml"
    cfg.write_text('_format_version: "3.0"\ngateway: {access_log: "off", workers: 3}\n')
    loaded, runtime = prepare(str(cfg))
    assert runtime.config_hash == loaded.hash == load_text(cfg.read_text(), str(cfg)).hash
    assert loaded.config.gateway.workers == 3

"""The supervisor: the process ``gwanmun run`` starts. It binds, forks and watches the workers; it never serves.

**Why fork after binding.** The supervisor binds every listener once per worker (``SO_REUSEPORT``: the kernel
spreads new connections over the N sockets of an address) and forks the workers, each inheriting its own sockets;
the supervisor keeps its copies open for the whole run. So:

- ``listen`` port 0 works (the first socket picks the port, the others bind that port);
- when a worker dies, the connections the kernel has already queued on its socket are not reset: the socket stays
  open in the supervisor and the replacement worker, forked with the same socket, accepts them (they wait for the
  restart instead of failing);
- a reload never touches a listener: it swaps a config inside the running workers (no process is restarted).

Forking also starts a worker in milliseconds, sharing the compiled config copy-on-write, where re-executing the
interpreter would import and compile everything again. The supervisor is single-threaded and never runs an event
loop: a worker starts its own uvloop loop after the fork, with nothing inherited but sockets and the compiled config.

**The loop.** One ``selectors`` loop over a signal wake-up pipe (``signal.set_wakeup_fd``: handlers do nothing
themselves, the loop reads which signals came) and one control channel per worker (``channel``), with timers for
restarts, the config file poll and the shutdown deadline.

**Signals.** SIGHUP: reload. SIGTERM/SIGINT: close the supervisor's listener copies, send SIGTERM to every worker
(each finishes its in-flight requests within ``gateway.shutdown_timeout``), wait for them; SIGKILL any still alive
5 s after that. A second SIGTERM/SIGINT forces the stop: workers are sent SIGUSR2 (they abort their connections at
once; a repeated SIGTERM would not do, see ``worker``) and killed after 2 s.

**Reload** (SIGHUP, ``gwanmun reload``, or the config file changed): the supervisor loads, validates and compiles
the file (``reload.prepare``). A bad config is logged (``config_rejected``, every error with file:line: field:
reason) and the running one keeps serving; an identical one (same config hash) is a no-op (``config_unchanged``).
Otherwise the validated config goes to every worker, which compiles and swaps it in; ``config_reloaded`` is logged
when all have (one per reload; ``superseded: true`` when a newer reload started before this one was done, so workers
may have gone straight to the newer config). Settings a reload cannot change (``reload.RESTART_FIELDS``) keep their running values and are logged
as ``config_needs_restart``.

**Crashes.** A worker that exits while the gateway is not stopping is logged (``worker_exited``: exit code or signal
name) and restarted: at once the first time, then after 0.1 s, 0.2 s, ... doubling up to 10 s while replacements keep
dying within 10 s of starting; a worker that lived 10 s resets the count. A worker that dies before the gateway has
finished starting stops the gateway (exit 1): that is a start-up error, not a crash.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from .. import native
from ..ratelimit import shared as ratelimit_shared
from ..observability import status as observability
from ..config import LoadedConfig
from ..errors import ConfigError
from ..runtime import Runtime
from ..server import address_of, bind, event, setup_logging, split_listen
from . import channel, pidfile
from . import worker as worker_process
from .reload import ConfigWatcher, prepare, resolve_workers, restart_needed
from .signals import SignalPipe

log = logging.getLogger("gwanmun")

BACKOFF_BASE = 0.1  # seconds before the second restart in a row; doubles with each further early exit
BACKOFF_CAP = 10.0
STABLE_AFTER = 10.0  # a worker that lived this long resets the backoff
KILL_MARGIN = 5.0  # after shutdown_timeout, workers still alive are killed
FORCE_KILL_AFTER = 2.0  # after a second SIGTERM/SIGINT
LISTEN_BACKLOG = 4096


def backoff(crashes: int) -> float:
    """Delay before restarting a worker after its ``crashes``-th early exit in a row."""
    if crashes <= 1:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (crashes - 2))


def describe_exit(status: int) -> dict:
    """A wait status as log fields: ``exit_code`` or ``signal`` (its name), and a ``reason`` sentence."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return {"exit_code": code, "reason": f"exited with code {code}"}
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    core = " (core dumped)" if os.WIFSIGNALED(status) and os.WCOREDUMP(status) else ""
    return {"signal": name, "reason": f"killed by {name}{core}"}


@dataclass(eq=False)
class Slot:
    """One worker position: its sockets (one per listener) outlive the worker processes that serve them."""

    index: int
    socks: list[socket.socket]
    pid: int = 0
    ctl: socket.socket | None = None
    outbox: channel.Outbox = field(default_factory=channel.Outbox)
    decoder: channel.Decoder = field(default_factory=channel.Decoder)
    started: float = 0.0
    ready: bool = False
    crashes: int = 0
    restart_at: float | None = None


@dataclass
class PendingReload:
    generation: int
    trigger: str
    previous_hash: str
    config_hash: str
    t0: float
    waiting: set[int]
    applied: int = 0
    failed: int = 0


class Supervisor:
    def __init__(self, config_path: str, loaded: LoadedConfig, runtime: Runtime, *, workers: int,
                 pid_file: str | None, overrides: dict, watcher: ConfigWatcher, signals: SignalPipe) -> None:
        self.config_path = config_path
        self.loaded = loaded
        self.runtime = runtime
        self.running_gateway = loaded.config.gateway  # what listeners, worker count and pid file were started with
        self.nworkers = workers
        self.pid_file = pid_file
        self.overrides = overrides
        self.watcher = watcher
        self.next_poll = 0.0
        self.slots: list[Slot] = []
        self.by_pid: dict[int, Slot] = {}
        self.generation = 0
        self.pending: list[PendingReload] = []  # reloads not yet applied by every worker, oldest first
        self.started = False
        self.stopping = False
        self.kill_at = 0.0
        self.exit_code = 0
        self.selector: selectors.BaseSelector | None = None
        self.signals = signals

    # -- start ----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._bind()
        except OSError as exc:
            event("listen_failed", logging.ERROR, error=str(exc))
            self._close_listeners()
            return 1
        for listen_socket in self.slots[0].socks:
            event("listening", address=address_of(listen_socket))
        if self.pid_file is not None:
            try:
                other = pidfile.write(self.pid_file, os.getpid())
            except OSError as exc:
                event("pid_file_failed", logging.ERROR, pid_file=self.pid_file, error=exc.strerror or str(exc))
                self._close_listeners()
                return 1
            if other is not None:
                event("pid_file_taken_over", logging.WARNING, pid_file=self.pid_file, previous_pid=other,
                      hint="`gwanmun reload` with this pid file now signals this gateway")
        compiled, stale = native.status()
        if stale:
            event("stale_compiled_modules", logging.WARNING, modules=stale, hint="reinstall: pip install -e .")
        self.compiled = len(compiled)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.signals.r, selectors.EVENT_READ, None)
        ratelimit_shared.create(workers=self.nworkers)  # rate-limit counters every worker shares: before any fork
        # metrics regions (one per worker, before any fork) and the status listener, served by this loop
        self.status_server = observability.start(self)
        try:
            for slot in self.slots:
                self._spawn(slot)
            return self._loop()
        finally:
            self._close_listeners()
            if self.pid_file is not None:
                pidfile.remove(self.pid_file, os.getpid())

    def _bind(self) -> None:
        """One socket per worker and listener; the first worker's sockets fix the ports (``listen`` port 0)."""
        addresses = [split_listen(v) for v in self.running_gateway.listen]
        for i in range(self.nworkers):
            slot = Slot(i, [])
            self.slots.append(slot)
            for j, (host, port) in enumerate(addresses):
                if i > 0:
                    port = self.slots[0].socks[j].getsockname()[1]
                s = bind(host, port)
                slot.socks.append(s)
                s.listen(LISTEN_BACKLOG)  # connections queue from now on, even before a worker accepts them

    def _close_listeners(self) -> None:
        for slot in self.slots:
            for s in slot.socks:
                s.close()

    # -- workers --------------------------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        assert self.selector is not None
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        # The child starts with the supervisor's signal handlers and wake-up pipe: a signal it got before leaving them
        # (the supervisor's own SIGTERM to a worker forked a moment before a shutdown) would be read by the supervisor
        # as its own, and a second SIGTERM forces the shutdown. So the handled signals are blocked across the fork and
        # unblocked in the child only once it has its own dispositions.
        signal.pthread_sigmask(signal.SIG_BLOCK, SignalPipe.HANDLED)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SignalPipe.HANDLED)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SignalPipe.HANDLED)
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                ours.close()
                self._leave_to_worker(slot)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SignalPipe.HANDLED)
                code = worker_process.main(slot.index, self.runtime, slot.socks, theirs, pid_file=self.pid_file)
            except BaseException:
                log.critical("worker failed", exc_info=True,
                             extra={"fields": {"event": "worker_error", "worker": slot.index, "pid": os.getpid()}})
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        theirs.close()
        ours.setblocking(False)
        slot.pid, slot.ctl, slot.started, slot.ready, slot.restart_at = pid, ours, time.monotonic(), False, None
        slot.outbox, slot.decoder = channel.Outbox(), channel.Decoder()
        self.by_pid[pid] = slot
        self.selector.register(ours, selectors.EVENT_READ, slot)

    def _leave_to_worker(self, slot: Slot) -> None:
        """In the forked child: drop the supervisor's signal set-up and every descriptor that is not this worker's."""
        self.signals.leave()
        signal.signal(worker_process.FORCE_SIGNAL, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.selector is not None:
            self.selector.close()  # closes the child's epoll descriptor; the supervisor's registrations are untouched
        for other in self.slots:
            if other is slot:
                continue
            for s in other.socks:
                s.close()
            if other.ctl is not None:
                other.ctl.close()

    def _live(self) -> list[Slot]:
        return [s for s in self.slots if s.pid]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.by_pid.pop(pid, None)
            if slot is not None:
                self._on_exit(slot, status)

    def _on_exit(self, slot: Slot, status: int) -> None:
        now = time.monotonic()
        pid, uptime = slot.pid, round(now - slot.started, 3)
        was_ready = slot.ready
        slot.pid, slot.ready = 0, False
        self._drop_channel(slot)
        info = describe_exit(status)
        for p in self.pending:
            p.waiting.discard(slot.index)  # its replacement is forked with the newest config
        self._finish_reloads()
        if self.stopping:
            clean = info.get("exit_code") == 0
            event("worker_exited", logging.INFO if clean else logging.WARNING, worker=slot.index, pid=pid,
                  uptime_s=uptime, **info)
            return
        if not self.started and not was_ready:
            event("worker_exited", logging.ERROR, worker=slot.index, pid=pid, uptime_s=uptime, **info,
                  hint="a worker died while the gateway was starting: stopping")
            self._begin_stop(None, exit_code=1)
            return
        if uptime >= STABLE_AFTER:
            slot.crashes = 0
        slot.crashes += 1
        delay = backoff(slot.crashes)
        slot.restart_at = now + delay
        event("worker_exited", logging.ERROR, worker=slot.index, pid=pid, uptime_s=uptime, **info,
              restart_in_s=delay)

    def _restart_due(self, now: float) -> None:
        for slot in self.slots:
            if not slot.pid and slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)

    def _drop_channel(self, slot: Slot) -> None:
        if slot.ctl is not None:
            assert self.selector is not None
            self.selector.unregister(slot.ctl)
            slot.ctl.close()
            slot.ctl = None

    # -- control channel ------------------------------------------------------------------------------------------
    def _on_channel(self, slot: Slot, mask: int) -> None:
        if slot.ctl is None:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = slot.ctl.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":  # the worker is exiting; reaping it says why
                self._drop_channel(slot)
                return
            if data:
                try:
                    payloads = slot.decoder.feed(data)
                except ValueError as exc:
                    event("control_channel_error", logging.ERROR, worker=slot.index, pid=slot.pid, error=str(exc))
                    self._drop_channel(slot)
                    return
                for payload in payloads:
                    self._on_message(slot, channel.decode(payload))
        if mask & selectors.EVENT_WRITE:
            self._flush(slot)

    def _flush(self, slot: Slot) -> None:
        if slot.ctl is None:
            return
        try:
            slot.outbox.flush(slot.ctl)
        except OSError:
            self._drop_channel(slot)
            return
        assert self.selector is not None
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if slot.outbox.pending else 0)
        if self.selector.get_key(slot.ctl).events != want:
            self.selector.modify(slot.ctl, want, slot)

    def _on_message(self, slot: Slot, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            slot.ready = True
            if not self.started and all(s.ready for s in self.slots):
                self.started = True
                event("started", config=self.config_path, config_hash=self.loaded.hash[:12], pid=os.getpid(),
                      workers=self.nworkers, worker_pids=[s.pid for s in self.slots], pid_file=self.pid_file,
                      compiled=self.compiled)
        elif kind in ("applied", "failed"):
            # A worker applies the newest config it has received, so one answer settles every older reload too.
            generation = message[1]
            if kind == "failed":
                event("config_apply_failed", logging.ERROR, worker=slot.index, pid=slot.pid, error=message[2],
                      hint="this worker keeps serving the config it had")
            for p in self.pending:
                if p.generation <= generation and slot.index in p.waiting:
                    p.waiting.discard(slot.index)
                    if kind == "applied":
                        p.applied += 1
                    else:
                        p.failed += 1
            self._finish_reloads()

    # -- reload ---------------------------------------------------------------------------------------------------
    def reload(self, trigger: str) -> None:
        """Load, validate and compile the config file; if it is valid and different, send it to every worker."""
        if self.stopping:
            return
        t0 = time.monotonic()
        self.watcher.sync()  # whatever triggered this, the file as it is now is what gets loaded
        try:
            loaded, runtime = prepare(self.config_path)
        except ConfigError as exc:
            event("config_rejected", logging.ERROR, file=self.config_path, trigger=trigger,
                  errors=str(exc).splitlines(), hint="the running config keeps serving")
            return
        except Exception as exc:  # a compile bug must not take the supervisor down either
            log.error("config_rejected", exc_info=True, extra={"fields": {
                "event": "config_rejected", "file": self.config_path, "trigger": trigger,
                "errors": [f"{type(exc).__name__}: {exc}"], "hint": "the running config keeps serving"}})
            return
        if loaded.hash == self.loaded.hash:
            event("config_unchanged", file=self.config_path, trigger=trigger, config_hash=loaded.hash[:12])
            return
        restart = restart_needed(self.running_gateway, loaded.config.gateway, self.overrides)
        if restart:
            event("config_needs_restart", logging.WARNING, file=self.config_path, trigger=trigger,
                  fields=[f"gateway.{name}" for name in restart],
                  changes={f"gateway.{k}": v for k, v in restart.items()},
                  hint="these settings keep their running values until gwanmun is restarted; "
                       "everything else in the new config is applied now")
        previous = self.loaded.hash
        self.loaded, self.runtime = loaded, runtime
        self.generation += 1
        frame = channel.encode(("config", self.generation, loaded))
        waiting = set()
        for slot in self._live():
            if slot.ctl is None:
                continue  # exiting: its replacement is forked with the new config
            slot.outbox.put(frame)
            self._flush(slot)
            waiting.add(slot.index)
        self.pending.append(PendingReload(self.generation, trigger, previous, loaded.hash, t0, waiting))
        self._finish_reloads()

    def _finish_reloads(self) -> None:
        """Log ``config_reloaded`` for each reload every worker has applied (or a newer one), oldest first."""
        while self.pending and not self.pending[0].waiting:
            p = self.pending.pop(0)
            superseded = p.generation < self.generation
            event("config_reloaded", logging.ERROR if p.failed else logging.INFO, file=self.config_path,
                  trigger=p.trigger, config_hash=p.config_hash[:12], previous_hash=p.previous_hash[:12],
                  workers=p.applied, failed=p.failed, duration_ms=round((time.monotonic() - p.t0) * 1000, 1),
                  **({"superseded": True} if superseded else {}))

    def _poll_config(self, now: float) -> None:
        interval = self.loaded.config.gateway.config_watch_interval
        if interval <= 0 or now < self.next_poll:
            return
        self.next_poll = now + interval
        change = self.watcher.poll()
        if change == "changed":
            self.reload("file changed")
        elif change == "missing":
            event("config_missing", logging.WARNING, file=self.config_path,
                  hint="the running config keeps serving; it is reloaded when the file is back")

    # -- stop -----------------------------------------------------------------------------------------------------
    def _begin_stop(self, sig: int | None, exit_code: int = 0) -> None:
        now = time.monotonic()
        name = signal.Signals(sig).name if sig is not None else None
        live = self._live()
        if not self.stopping:
            self.stopping = True
            self.exit_code = exit_code
            grace = self.loaded.config.gateway.shutdown_timeout
            self._close_listeners()  # with the workers' copies closed too, new connections are refused
            for slot in self.slots:
                slot.restart_at = None
            event("shutting_down", signal=name, workers=len(live), grace_s=grace)
            self.kill_at = now + grace + KILL_MARGIN
            for slot in live:
                _kill(slot.pid, signal.SIGTERM)
        else:
            event("forced_shutdown", logging.WARNING, signal=name, workers=len(live))
            self.exit_code = 1
            self.kill_at = min(self.kill_at, now + FORCE_KILL_AFTER)
            for slot in live:
                _kill(slot.pid, worker_process.FORCE_SIGNAL)

    def _kill_all(self) -> None:
        for slot in self._live():
            event("worker_killed", logging.WARNING, worker=slot.index, pid=slot.pid,
                  reason="still running after the shutdown deadline")
            _kill(slot.pid, signal.SIGKILL)
        self.kill_at = float("inf")

    # -- the loop -------------------------------------------------------------------------------------------------
    def _on_signals(self) -> None:
        for sig in self.signals.read():
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(sig)
            elif sig == signal.SIGHUP:
                self.reload("SIGHUP")

    def _timeout(self, now: float) -> float | None:
        deadlines = [s.restart_at for s in self.slots if not s.pid and s.restart_at is not None]
        if self.stopping:
            deadlines.append(self.kill_at)
        elif self.loaded.config.gateway.config_watch_interval > 0:
            deadlines.append(self.next_poll)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _loop(self) -> int:
        assert self.selector is not None
        self.next_poll = time.monotonic() + self.loaded.config.gateway.config_watch_interval
        while True:
            for key, mask in self.selector.select(self._timeout(time.monotonic())):
                if key.data is None:
                    self._on_signals()
                elif isinstance(key.data, Slot):
                    self._on_channel(key.data, mask)
                else:  # the status listener and its connections (observability/status.py)
                    key.data(mask)
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if not self._live():
                    event("stopped", pid=os.getpid(), exit_code=self.exit_code)
                    return self.exit_code
                if now >= self.kill_at:
                    self._kill_all()
                continue
            self._restart_due(now)
            self._poll_config(now)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run(config_path: str, *, workers: int | str | None = None, pid_file: str | None = None,
        signals: SignalPipe | None = None) -> int:
    """``gwanmun run``: load the config, then supervise the workers until SIGTERM/SIGINT. Returns the exit code.
    ``signals``: the pipe, if the caller installed it already (the CLI does, before importing this module)."""
    setup_logging()
    signals = signals or SignalPipe()
    watcher = ConfigWatcher(config_path)  # the baseline before loading: a change from now on is noticed
    try:
        loaded, runtime = prepare(config_path)
    except ConfigError as exc:  # every issue with file:line
        event("config_rejected", logging.ERROR, file=config_path, errors=str(exc).splitlines())
        return 2
    gw = loaded.config.gateway
    overrides: dict = {}
    if workers is not None:
        overrides["workers"] = workers
    if pid_file is not None:
        overrides["pid_file"] = pid_file
    supervisor = Supervisor(
        config_path, loaded, runtime,
        workers=resolve_workers(workers if workers is not None else gw.workers),
        pid_file=pidfile.resolve(gw.pid_file, pid_file),
        overrides=overrides,
        watcher=watcher,
        signals=signals,
    )
    return supervisor.run()

"""A worker process: serve the sockets the supervisor bound, swap in the configs it sends, stop on SIGTERM.

Signals: SIGTERM starts a graceful shutdown (stop accepting, finish in-flight requests within
``gateway.shutdown_timeout``); more SIGTERMs change nothing, because a worker may get one from the supervisor and
one from whoever signalled the whole group (systemd's default ``KillMode=control-group`` does). SIGUSR2, which the
supervisor sends on a second SIGTERM/SIGINT, aborts what is left at once. SIGINT and SIGHUP are ignored: a terminal's
Ctrl-C or hang-up reaches the whole process group, and only the supervisor acts on them. If the supervisor
disappears (the control channel closes), the worker stops gracefully.

Reloads: a config arrives on the control channel, already validated by the supervisor. It is unpickled and compiled
in a thread, so the event loop keeps serving meanwhile, then swapped in on the loop (``Worker.apply``); configs that
arrive while one is being compiled are coalesced to the newest. Requests in flight keep the runtime they started
with; once none uses the old one, it is released (and the permanent GC generation rebuilt: see ``_Retirer``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import socket

import uvloop

from ..config.compile import compile_runtime
from ..runtime import Runtime
from ..server import Worker, close_plugins, event
from ..upstream.health import status_path
from . import channel

FORCE_SIGNAL = signal.SIGUSR2  # from the supervisor: stop now


def main(index: int, runtime: Runtime, socks: list[socket.socket], ctl: socket.socket,
         pid_file: str | None = None) -> int:
    """A worker's whole life, in the forked child. Returns its exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise_open_files_limit()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(index, runtime, socks, ctl, pid_file))


def raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one, as nginx's ``worker_rlimit_nofile`` is meant for: a
    distribution's default soft limit (1024) would otherwise cap a worker near 1,000 connections, far below
    ``max_connections``, and turn the excess into accept errors instead of the documented 503."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ValueError, OSError):
        pass  # not allowed here: keep the limit we have


async def _serve(index: int, runtime: Runtime, socks: list[socket.socket], ctl: socket.socket,
                 pid_file: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    pid = os.getpid()
    worker = Worker(runtime, loop, health_status=status_path(pid_file, index), index=index)
    await worker.start(socks)
    # Everything built so far (config, compiled routes, pools) lives as long as the runtime: move it out of the
    # cyclic GC's generations, so collections stop re-scanning 10,000 routes (the gc.freeze() idiom).
    gc.collect()
    gc.freeze()
    reader, writer = await asyncio.open_unix_connection(sock=ctl)
    stop = asyncio.Event()

    def force() -> None:
        event("forced_stop", logging.WARNING, worker=index, pid=pid, connections=len(worker.connections))
        worker.force_close()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(FORCE_SIGNAL, force)
    reloads = _Reloads(worker, index, writer)
    tasks = [asyncio.create_task(reloads.receive(reader, stop)), asyncio.create_task(reloads.apply())]
    event("worker_started", worker=index, pid=pid, config_hash=runtime.config_hash[:12])
    writer.write(channel.encode(("ready", pid)))

    await stop.wait()
    worker.stop_accepting()  # before saying so: after "stopping", no new connection is accepted here
    event("stopping", worker=index, pid=pid, connections=len(worker.connections))
    await worker.shutdown(grace=worker.holder.current.gateway.shutdown_timeout)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()
    event("worker_stopped", worker=index, pid=pid)
    return 0


def _compile(payload: bytes) -> tuple[int, Runtime]:
    """In a thread: the supervisor's ``("config", generation, LoadedConfig)`` -> (generation, Runtime)."""
    kind, generation, loaded = channel.decode(payload)
    if kind != "config":
        raise ValueError(f"unexpected control message {kind!r}")
    return generation, compile_runtime(loaded)


class _Reloads:
    def __init__(self, worker: Worker, index: int, writer: asyncio.StreamWriter) -> None:
        self.worker = worker
        self.index = index
        self.writer = writer
        self.latest: bytes | None = None
        self.arrived = asyncio.Event()
        self.retirer = _Retirer(worker)

    async def receive(self, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
        """Keep only the newest config message; EOF means the supervisor is gone: stop."""
        try:
            while True:
                head = await reader.readexactly(channel.HEADER.size)
                (n,) = channel.HEADER.unpack(head)
                self.latest = await reader.readexactly(n)
                self.arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            if not stop.is_set():
                event("supervisor_gone", logging.WARNING, worker=self.index, pid=os.getpid())
                stop.set()

    async def apply(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            payload, self.latest = self.latest, None
            if payload is None:
                continue
            generation = -1
            try:
                generation, runtime = await loop.run_in_executor(None, _compile, payload)
                old = self.worker.apply(runtime)
            except Exception as exc:  # the old runtime keeps serving
                event("config_apply_failed", logging.ERROR, worker=self.index, pid=os.getpid(),
                      error=f"{type(exc).__name__}: {exc}")
                self._send(("failed", generation, f"{type(exc).__name__}: {exc}"))
                continue
            self._send(("applied", generation, runtime.config_hash))
            self.retirer.add(old)
            del old, runtime, payload  # no reference may outlive the requests still using the old runtime

    def _send(self, message: tuple) -> None:
        if not self.writer.is_closing():
            self.writer.write(channel.encode(message))


class _Retirer:
    """Releases replaced runtimes once no request uses them any more.

    The runtime in use is in the GC's permanent generation (``gc.freeze``), where cyclic garbage is never collected:
    a compiled router is full of cycles. So once the requests that started on an old runtime have all ended, the
    permanent generation is rebuilt (unfreeze, collect, freeze), which frees the old runtime and freezes the new.
    """

    POLL = 0.25

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.retiring: list[Runtime] = []
        self.task: asyncio.Task | None = None

    def add(self, runtime: Runtime) -> None:
        self.retiring.append(runtime)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.retiring:
            await asyncio.sleep(self.POLL)
            still = [rt for rt in self.retiring if self.worker.in_use(rt)]
            if len(still) == len(self.retiring):
                continue
            for rt in self.retiring:
                if rt not in still:
                    await close_plugins(rt)
            self.retiring = still
            gc.unfreeze()
            gc.collect()
            gc.freeze()

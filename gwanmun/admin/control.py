"""The control plane of one node: the Admin API, the config store, and what the node serves.

It lives in the supervisor process, on its own thread with its own asyncio loop (the supervisor's main thread is a
``selectors`` loop that forks workers; it never runs asyncio). The two meet in two places only:

- ``combine(loaded)`` (``gwanmun.process.reload.config_source``): every time the supervisor prepares a config (at
  start, on SIGHUP, when the file changes) it loads the node's config file as before and asks the control plane for
  the config to serve: the file's ``gateway:`` settings with the entities of the store's current version. The
  supervisor then compiles it and pushes it to every worker exactly as for a file reload, and a failure keeps the
  running config serving, as for a file.
- ``kick()``: when the current version changes (a commit here, a NOTIFY or a poll from another node's commit), the
  control plane sends the supervisor SIGHUP, which is the reload above. So a committed change reaches every worker of
  every node through one path, the one the file reload already proves.

**Modes** (``gateway.admin.database``): ``postgres`` (a cluster: LISTEN/NOTIFY pushes each commit to every node, and
the head is polled every ``poll_interval`` as a fallback), ``sqlite`` (one node; the head is polled, so a
``gwanmun config rollback`` on the same file applies too), ``off`` (DB-less: the config file's entities are served;
``POST /config`` replaces them until the file changes again; every other write is 405).

**No single point of failure.** Each version the node applies is saved to its last-known-good file
(``LastKnownGood``). If the store cannot be reached at start-up, the node serves that copy; whenever the store is
unreachable, the node keeps serving what it has, answers writes with 503, and reconnects by itself (backoff 0.2 s
doubling to 2 s), then catches up with the head.

**Forking with a thread.** The supervisor forks workers (at start and when one crashes) while this thread runs.
A fork copies only the forking thread, so a lock held by this thread at that instant would stay locked forever in
the child. To rule that out, this thread holds a gate (an ``RLock``) whenever it runs anything, and lets go of it only
while its loop waits in ``epoll`` (``_GatedSelector``); an ``os.register_at_fork`` hook takes the gate before every
fork and gives it back after, so a fork always happens while this thread is parked in ``epoll``, holding nothing.
In the child, the thread's descriptors (the admin listeners, client and database connections, the epoll and
self-pipe descriptors) are replaced with ``/dev/null``, so a worker holds no database connection open.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import LoadedConfig, load_data
from ..config.model import _parse_listen  # noqa: PLC2701 (the one listen-address parser)
from ..errors import ConfigError, ConfigIssue
from ..server import event
from ..store import LastKnownGood, SchemaError, StoreUnavailable, Version, cache_path, make_store
from ..store import doc as docs
from ..store.memory import MemoryStore
from .entities import ApiError, Writer, index_of, issues_error

log = logging.getLogger("gwanmun")

BACKOFF_START = 0.2
BACKOFF_CAP = 2.0


class StartError(Exception):
    """The control plane cannot start: the message says why and what to do."""


class _GatedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's selector (epoll on Linux), giving up the fork gate while it waits (see the module doc)."""

    def __init__(self, gate: threading.RLock) -> None:
        super().__init__()
        self._gate = gate

    def select(self, timeout=None):
        self._gate.release()
        try:
            return super().select(timeout)
        finally:
            self._gate.acquire()


def gateway_data(node: LoadedConfig | None) -> dict[str, Any]:
    """A config file's ``gateway:`` settings as data (what was set), to serve with a store's entities."""
    if node is None:
        return {}
    return node.config.gateway.model_dump(mode="json", by_alias=True, exclude_unset=True)


def merged(flat: dict[str, Any], gateway: dict[str, Any], label: str) -> LoadedConfig:
    """Entities (a declarative document without ``gateway:``) with a node's gateway settings, validated. Raises
    ``ConfigError``."""
    data = dict(flat)
    data["gateway"] = gateway
    return load_data(data, label)


async def validate(flat: dict[str, Any], gateway: dict[str, Any], entity: tuple[str, int] | None = None, *,
                   declarative: bool = False, label: str = "<admin>") -> dict[str, Any]:
    """The whole document as a node would serve it: loaded (every check, with field paths) and compiled (what only
    building plugins can tell). Returns it normalized (``doc.normalize``). Raises ``ApiError`` 400."""
    from ..config.compile import compile_runtime
    from ..server import close_plugins

    loaded = _load_checked(flat, gateway, label, entity, declarative)
    normalized = docs.normalize(flat, loaded.config)
    try:
        runtime = compile_runtime(loaded)
    except ConfigError as exc:
        raise issues_error(exc.issues, entity, declarative=declarative) from None
    await close_plugins(runtime)
    return normalized


def check_declarative(data: Any, gateway: dict[str, Any], label: str = "<request>") -> None:
    """A document given to replace the whole config: a mapping, no ``gateway:``, valid as given (so the errors carry
    its own paths, before it is flattened). Raises ``ApiError`` 400."""
    if not isinstance(data, dict):
        raise ApiError(400, {"code": 14, "name": "invalid declarative configuration",
                             "message": "declarative config is invalid: expected a mapping with '_format_version'"})
    if "gateway" in data:
        raise issues_error([ConfigIssue(("gateway",), "a node's gateway settings are not stored in the config "
                                                     "store: set them in each node's config file")],
                           declarative=True)
    _load_checked(data, gateway, label, None, True)


def _load_checked(flat: dict[str, Any], gateway: dict[str, Any], label: str, entity: tuple[str, int] | None,
                  declarative: bool) -> LoadedConfig:
    try:
        return merged(flat, gateway, label)
    except ConfigError as exc:
        raise issues_error(exc.issues, entity, declarative=declarative) from None
    except Exception as exc:  # noqa: BLE001 - a loader bug on odd input is still a rejected input, not a 500
        log.error("config_validator_failed", exc_info=True, extra={"fields": {"event": "config_validator_failed"}})
        raise ApiError(400, {"code": 14 if declarative else 2, "name": "invalid configuration",
                             "message": f"the config was rejected: the validator failed on it "
                                        f"({type(exc).__name__}: {exc})"}) from None


async def replace_in(store, data: dict[str, Any], gateway: dict[str, Any], *, author: str,
                     message: str) -> Version | None:
    """Commit ``data`` (checked with ``check_declarative``) as the next version: flattened (ids kept for the same
    entities), validated. None when it changes nothing."""

    async def build(head: Version | None):
        flat = docs.flatten(data, head.doc if head is not None else None)
        normalized = await validate(flat, gateway, declarative=True)
        if head is not None and not docs.changes(head.doc, normalized):
            return None
        return normalized, message

    return await store.commit(build, author)


async def rollback_in(store, target: int, gateway: dict[str, Any], *, author: str) -> Version | None:
    """Commit version ``target``'s document again, as the next version (history only grows). None when the head
    already has that config. Raises ``ApiError`` 404 for an unknown version, 400 if it no longer validates."""
    old = await store.get(target)
    if old is None or old.doc is None:
        raise ApiError(404, {"message": f"no version {target} (see GET /config/versions)"})

    async def build(head: Version | None):
        normalized = await validate(copy.deepcopy(old.doc), gateway, declarative=True, label=f"<version {target}>")
        if head is not None and not docs.changes(head.doc, normalized):
            return None
        return normalized, f"rollback to version {target}"

    return await store.commit(build, author)


def file_entities(node: LoadedConfig) -> dict[str, Any]:
    """The entities of a loaded config file, as a (nested) declarative document without ``gateway:``."""
    data = node.config.model_dump(mode="json", by_alias=True, exclude={"gateway"})
    data.pop("_transform", None)
    return {k: v for k, v in data.items() if v not in ([], None)}


def has_entities(doc: dict[str, Any]) -> bool:
    return any(docs.entities(doc, k) for k in docs.KINDS)


class ControlPlane:
    def __init__(self, config_path: str, node: LoadedConfig, *, kick: Callable[[], None] | None = None) -> None:
        settings = node.config.gateway.admin
        if settings is None:
            raise ValueError("gateway.admin is not set")
        self.config_path = config_path
        self.node = node  # the config file as last loaded: the node's own gateway settings
        self.settings = settings
        self.mode = settings.database
        self.store = make_store(settings, config_path)
        self.cache = LastKnownGood(cache_path(settings, config_path)) if self.mode != "off" else None
        self.current: Version | None = None  # the version served (None: no version yet, an empty config)
        self.source = "file" if self.mode == "off" else "database"  # or "cache"
        self.reachable = self.mode != "postgres"
        self.last_error: str | None = None
        self.prepared_hash: str | None = None  # the config hash last handed to the supervisor
        self.started_at = time.time()
        self._kick = kick or _sighup_self
        self._lock = threading.Lock()
        self._file_hash: str | None = None  # DB-less: the file version last taken
        self._overlay = False  # DB-less: POST /config replaced the file's entities
        self._live = False  # after start-up: version changes kick the supervisor
        self._running = False
        self._gate = threading.RLock()
        self._forking = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._servers: list[Any] = []
        self._server_tasks: list[asyncio.Task] = []
        self._sockets: list[socket.socket] = []
        self.addresses: list[str] = []

    # ==============================================================================================================
    # main thread
    # ==============================================================================================================

    def start(self, timeout: float | None = None) -> None:
        """Bind the admin listeners, open the store, load the current version (or the last known good copy), and
        serve. Blocks until done; raises ``StartError``."""
        self._bind()
        self._running = True
        os.register_at_fork(before=self._before_fork, after_in_parent=self._after_fork_parent,
                            after_in_child=self._after_fork_child)
        self.thread = threading.Thread(target=self._thread_main, name="gwanmun-admin", daemon=True)
        self.thread.start()
        wait = timeout if timeout is not None else self.settings.connect_timeout * 3 + 30
        if not self._ready.wait(wait):
            self.stop()
            raise StartError(f"the control plane did not start within {wait:.0f} s")
        if self._start_error is not None:
            self.stop()
            err = self._start_error
            raise err if isinstance(err, StartError) else StartError(f"{type(err).__name__}: {err}")
        self._live = True

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        self._running = False
        for s in self._sockets:
            s.close()

    def combine(self, node: LoadedConfig) -> LoadedConfig:
        """``reload.config_source``: the config to serve, given the config file as just loaded."""
        self.node = node
        if self.mode == "off":
            loaded = self._combine_file(node)
        else:
            cur = self.current
            label = f"<{self.store.kind} version {cur.version}>" if cur else f"<{self.store.kind}: empty>"
            loaded = self.merged(cur.doc if cur and cur.doc else docs.empty(), node, label)
        self.prepared_hash = loaded.hash
        return loaded

    def merged(self, flat: dict[str, Any], node: LoadedConfig, label: str) -> LoadedConfig:
        """``flat`` (entities) with ``node``'s gateway settings, validated. Raises ``ConfigError``."""
        return merged(flat, gateway_data(node), label)

    def _combine_file(self, node: LoadedConfig) -> LoadedConfig:
        """DB-less: the file's entities, unless POST /config replaced them since the file last changed."""
        with self._lock:
            if node.hash != self._file_hash:
                self._file_hash = node.hash
                self._overlay = False
                try:
                    flat = self._flat_from_file(node, self.current.doc if self.current else None)
                except (ConfigError, ApiError, ValueError, KeyError, TypeError) as exc:
                    log.error("admin_view_failed", exc_info=True, extra={"fields": {
                        "event": "admin_view_failed", "error": f"{type(exc).__name__}: {exc}",
                        "hint": "the file is served; the Admin API shows the previous view"}})
                    return node
                assert isinstance(self.store, MemoryStore)
                if self.current is None or docs.changes(self.current.doc, flat):
                    self.current = self.store.commit_sync(flat, "file", f"config file {self.config_path}")
                return node
            if self._overlay and self.current is not None and self.current.doc is not None:
                return self.merged(self.current.doc, node, f"<POST /config version {self.current.version}>")
            return node

    def _flat_from_file(self, node: LoadedConfig, previous: dict[str, Any] | None) -> dict[str, Any]:
        flat = docs.flatten(file_entities(node), previous)
        loaded = self.merged(flat, node, self.config_path)
        return docs.normalize(flat, loaded.config)

    # -- binding and fork safety -----------------------------------------------------------------------------------
    def _bind(self) -> None:
        for value in self.settings.listen:
            host, port = _parse_listen(value)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(128)
                s.setblocking(False)
            except OSError as exc:
                s.close()
                for other in self._sockets:
                    other.close()
                self._sockets = []
                raise StartError(f"cannot listen on {value} (gateway.admin.listen): {exc.strerror or exc}") from None
            self._sockets.append(s)
            h, p = s.getsockname()[:2]
            self.addresses.append(f"[{h}]:{p}" if family == socket.AF_INET6 else f"{h}:{p}")

    def _before_fork(self) -> None:
        if self._running and threading.current_thread() is not self.thread:
            self._forking = self._gate.acquire(timeout=5.0)

    def _after_fork_parent(self) -> None:
        if self._forking:
            self._forking = False
            self._gate.release()

    def _after_fork_child(self) -> None:
        if not self._running:
            return
        self._running = False
        fds: set[int] = {s.fileno() for s in self._sockets if s.fileno() >= 0}
        loop = self.loop
        selector = getattr(loop, "_selector", None)
        if selector is not None:
            try:
                fds.update(key.fd for key in selector.get_map().values())
                fds.add(selector.fileno())
            except Exception:  # noqa: BLE001 - best effort in a fresh child
                pass
        for name in ("_ssock", "_csock"):
            sock = getattr(loop, name, None)
            if sock is not None and sock.fileno() >= 0:
                fds.add(sock.fileno())
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return
        for fd in fds:
            if fd > 2 and fd != devnull:
                try:
                    os.dup2(devnull, fd)
                except OSError:
                    pass
        os.close(devnull)

    # ==============================================================================================================
    # the control thread
    # ==============================================================================================================

    def _thread_main(self) -> None:
        from ..process.signals import SignalPipe

        signal.pthread_sigmask(signal.SIG_BLOCK, SignalPipe.HANDLED)  # the supervisor's signals go to its thread
        self._gate.acquire()
        try:
            loop = asyncio.SelectorEventLoop(_GatedSelector(self._gate))
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._main())
            finally:
                loop.close()
        except BaseException as exc:  # noqa: BLE001
            if not self._ready.is_set():
                self._start_error = exc
            else:
                log.error("control_plane_failed", exc_info=True, extra={"fields": {"event": "control_plane_failed"}})
        finally:
            self._ready.set()
            self._gate.release()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        try:
            await self._bootstrap()
            await self._serve()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            await self.store.close()
            return
        self._ready.set()
        sync = asyncio.create_task(self._sync_loop()) if self.mode != "off" else None
        await self._stop.wait()
        for server in self._servers:
            server.should_exit = True
        if sync is not None:
            sync.cancel()
        await asyncio.gather(*(t for t in [sync, *self._server_tasks] if t is not None), return_exceptions=True)
        await self.store.close()

    async def _serve(self) -> None:
        import uvicorn

        from .api import build_app

        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = uvicorn.Config(build_app(self), lifespan="off", log_config=None, access_log=False, loop="none",
                                http="httptools", ws="none", proxy_headers=False, server_header=False,
                                timeout_keep_alive=5, timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        self._servers = [server]
        self._server_tasks = [asyncio.create_task(server.serve(sockets=self._sockets))]
        for _ in range(200):  # wait until it serves (or failed)
            if server.started or self._server_tasks[0].done():
                break
            await asyncio.sleep(0.01)
        if self._server_tasks[0].done():
            exc = self._server_tasks[0].exception()
            raise StartError(f"the Admin API did not start: {exc}")
        for address in self.addresses:
            event("admin_listening", address=address, database=self.store.kind, auth=bool(self.settings.tokens))

    # -- start-up -------------------------------------------------------------------------------------------------
    async def _bootstrap(self) -> None:
        if self.mode == "off":
            self._combine_file(self.node)
            return
        try:
            await asyncio.wait_for(self.store.open(), self.settings.connect_timeout + 1)
            pending = await self.store.pending_migrations()
            if pending and self.mode == "sqlite":
                done = await self.store.migrate()
                event("migrations_applied", store=self.store.describe, migrations=done)
            elif pending:
                raise StartError(f"the database needs migrations ({', '.join(pending)}): run `gwanmun migrations up "
                                 f"--config {self.config_path}` first")
            latest = await self.store.latest()
            in_file = file_entities(self.node)
            if latest is None and has_entities(in_file):
                latest = await self.replace(in_file, author="seed", message=f"imported from {self.config_path}",
                                            apply=False)
            elif has_entities(in_file):
                event("config_file_entities_ignored", logging.WARNING, file=self.config_path,
                      store=self.store.describe, hint="the store has the config; the file's entities were only "
                      "imported into an empty store (use `gwanmun config sync` to apply a file)")
            if latest is not None:
                self._set_current(latest, "start")
            self.reachable = True
            event("config_store_ready", store=self.store.describe, version=latest.version if latest else 0,
                  config_hash=latest.hash[:12] if latest else None)
        except (StoreUnavailable, SchemaError, asyncio.TimeoutError) as exc:
            await self.store.close()
            reason = str(exc) or type(exc).__name__
            self.reachable = False
            self.last_error = reason
            cached = self.cache.load() if self.cache else None
            if cached is None:
                raise StartError(f"cannot use the config store {self.store.describe} ({reason}), and there is no "
                                 f"last known good config at {self.cache.path if self.cache else '-'}") from None
            version, record = cached
            self.current = version
            self.source = "cache"
            event("config_from_cache", logging.WARNING, store=self.store.describe, error=reason,
                  cache=self.cache.path if self.cache else None, version=version.version,
                  saved_at=record.get("saved_at"), hint="serving the last known good config; reconnecting")

    # -- following the store ---------------------------------------------------------------------------------------
    def _notified(self, version: int) -> None:
        assert self._wake is not None
        self._wake.set()

    def _lost(self) -> None:
        if self._wake is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    async def _sync_loop(self) -> None:
        """Keep the current version equal to the store's head: on NOTIFY, every poll_interval, after reconnecting."""
        assert self._wake is not None
        backoff = BACKOFF_START
        while True:
            try:
                if not self.store.is_open:
                    await asyncio.wait_for(self.store.open(), self.settings.connect_timeout + 1)
                    if await self.store.pending_migrations():
                        raise SchemaError("the database has no (current) gwanmun schema: run `gwanmun migrations up`")
                if self.store.push:
                    await self.store.listen(self._notified, self._lost)
                head = await self.store.head()
                if not self.reachable:
                    self.reachable = True
                    self.last_error = None
                    event("config_store_reachable", store=self.store.describe, version=head)
                cur = self.current
                if head and (cur is None or head != cur.version or self.source == "cache"):
                    v = await self.store.get(head)
                    if v is not None:
                        self._set_current(v, "notify" if self._wake.is_set() else "poll")
                backoff = BACKOFF_START
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                except asyncio.TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except (StoreUnavailable, SchemaError, asyncio.TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                if self.reachable or reason != self.last_error:
                    event("config_store_unreachable", logging.WARNING, store=self.store.describe, error=reason,
                          version=self.current.version if self.current else 0,
                          hint="serving the current config; writes get 503; reconnecting")
                self.reachable = False
                self.last_error = reason
                await self.store.close()
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_CAP, backoff * 2)
            except Exception:  # noqa: BLE001 - a bug here must not stop the node following its store
                log.error("config_sync_failed", exc_info=True, extra={"fields": {"event": "config_sync_failed"}})
                await asyncio.sleep(BACKOFF_CAP)

    def _set_current(self, v: Version, origin: str) -> None:
        cur = self.current
        same = cur is not None and cur.hash == v.hash
        self.current = v
        was_cache = self.source == "cache"
        self.source = "database" if self.mode != "off" else "file"
        if self.cache is not None and (not same or was_cache or cur.version != v.version):
            try:
                self.cache.save(v, self.store.describe)
            except OSError as exc:
                event("config_cache_failed", logging.WARNING, cache=self.cache.path, error=exc.strerror or str(exc))
        if same:
            return
        event("config_version", version=v.version, config_hash=v.hash[:12], origin=origin, author=v.author,
              what=v.message, changes=len(v.changes))
        if self._live:
            self._kick()

    # -- writes ---------------------------------------------------------------------------------------------------
    async def validate(self, flat: dict[str, Any], entity: tuple[str, int] | None = None, *,
                       declarative: bool = False, label: str = "<admin>") -> dict[str, Any]:
        return await validate(flat, gateway_data(self.node), entity, declarative=declarative, label=label)

    def _writable(self) -> None:
        if self.mode == "off":
            raise ApiError(405, {"code": 12, "name": "operation unsupported",
                                 "message": "cannot change entities when not using a database (gateway.admin."
                                            "database: off): replace the whole config with POST /config"})

    async def change(self, kind: str, mutate: Callable[[Writer], Any], *, author: str,
                     message: str) -> tuple[Any, dict[str, Any]]:
        """One Admin API write: ``mutate(writer)`` on a copy of the head, the whole result validated, committed as
        the next version and applied. Returns (mutate's result, the document now current)."""
        self._writable()
        box: dict[str, Any] = {}

        async def build(head: Version | None):
            base = head.doc if head is not None and head.doc is not None else docs.empty()
            doc = copy.deepcopy(base)
            result = mutate(Writer(doc))
            box["result"] = result
            index = index_of(doc, kind, result) if isinstance(result, str) else None
            normalized = await self.validate(doc, (kind, index) if index is not None else None)
            box["doc"] = normalized
            if head is not None and not docs.changes(head.doc, normalized):
                return None  # nothing changed: no new version
            if head is None and not has_entities(normalized):
                return None
            return normalized, message

        v = await self.store.commit(build, author)
        if v is not None:
            self._set_current(v, "commit")
        return box.get("result"), box.get("doc") or self.view()

    async def replace(self, data: Any, *, author: str, message: str, apply: bool = True) -> Version | None:
        """Replace every entity with those of a declarative document (POST /config, seeding). Returns the new
        version, or None when nothing changed."""
        gateway = gateway_data(self.node)
        check_declarative(data, gateway)
        v = await replace_in(self.store, data, gateway, author=author, message=message)
        if v is not None:
            if self.mode == "off":
                self._overlay = True
            if apply:
                self._set_current(v, "commit")
        return v

    async def rollback(self, target: int, *, author: str) -> Version | None:
        v = await rollback_in(self.store, target, gateway_data(self.node), author=author)
        if v is not None:
            if self.mode == "off":
                self._overlay = True
            self._set_current(v, "commit")
        return v

    # -- reads ----------------------------------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        cur = self.current
        return cur.doc if cur is not None and cur.doc is not None else docs.empty()

    def status(self) -> dict[str, Any]:
        cur = self.current
        return {
            "database": {"reachable": self.reachable, "kind": self.mode, "store": self.store.describe,
                         **({"error": self.last_error} if self.last_error and not self.reachable else {})},
            "configuration_hash": self.prepared_hash,
            "config": {"version": cur.version if cur else 0, "hash": cur.hash if cur else None,
                       "created_at": cur.created_at if cur else None, "author": cur.author if cur else None,
                       "source": self.source},
            "server": {"pid": os.getpid(), "uptime_s": round(time.time() - self.started_at, 3)},
        }


def _sighup_self() -> None:
    os.kill(os.getpid(), signal.SIGHUP)

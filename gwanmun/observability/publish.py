"""A worker's side of observability: its recorder, its tracing, and its snapshot published to the supervisor.

``WorkerObservability`` belongs to a ``server.Worker``. Once a second (``PUBLISH_INTERVAL``), and when the worker
stops, it copies a snapshot into the worker's shared-memory region (``shm``): the recorder's counters plus what
only the worker knows as gauges (its connections, circuit-breaker states, target health, the config hash it serves).
The supervisor reads and sums these (``status``). A worker not started by a supervisor (tests, the in-process bench)
has no region: it records, but publishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from typing import Any

from . import metrics, shm
from .tracing import Tracing, settings_key

log = logging.getLogger("gwanmun")

PUBLISH_INTERVAL = float(os.environ.get("GWANMUN_METRICS_INTERVAL", "1.0"))  # seconds
BREAKER_STATES = ("closed", "open", "half_open")


class WorkerObservability:
    def __init__(self, worker: Any, index: int = 0) -> None:
        self.worker = worker
        self.index = index
        self.pid = os.getpid()
        self.started = time.time()
        self.timer: asyncio.TimerHandle | None = None
        self.tracing_key: Any = None
        self.retired: list[Tracing] = []
        metrics.bind(worker.recorder)  # the rate-limit plugins' entry point counts into this worker's recorder
        self.configure(worker.holder.current.gateway)

    # -- config -----------------------------------------------------------------------------------------------------
    def configure(self, gw: Any) -> None:
        """Start, stop or rebuild tracing when ``gateway.tracing`` changed (at start and on each reload)."""
        rec = self.worker.recorder  # its cache of the last route must not keep a replaced runtime's objects alive
        rec.last_route = rec.last_service = rec.last = None
        settings = getattr(gw, "tracing", None) if gw is not None else None
        key = settings_key(settings)
        if key == self.tracing_key:
            return
        self.tracing_key = key
        old = self.worker.tracing
        new = None
        if settings is not None:
            try:
                new = Tracing(settings, self.index)
            except Exception as exc:  # noqa: BLE001 - tracing must not stop a worker from serving
                log.error("tracing_failed", extra={"fields": {"event": "tracing_failed", "worker": self.index,
                                                              "error": f"{type(exc).__name__}: {exc}"}})
        self.worker.tracing = new
        self.worker.recorder.tracing = new
        if old is not None:
            self._retire(old)

    def _retire(self, old: Tracing) -> None:
        """Flush and stop a replaced tracer off the event loop (its exporter may wait on the network)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            old.shutdown()
            return
        loop.run_in_executor(None, old.shutdown)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.publish()
        self.timer = self.worker.loop.call_later(PUBLISH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.publish()
        self.timer = self.worker.loop.call_later(PUBLISH_INTERVAL, self._tick)

    async def aclose(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.publish()  # the last counts, for the supervisor to keep after this worker exits
        tracing = self.worker.tracing
        if tracing is not None:
            self.worker.tracing = None
            self.worker.recorder.tracing = None
            await asyncio.get_running_loop().run_in_executor(None, tracing.shutdown)

    # -- the snapshot -----------------------------------------------------------------------------------------------
    def publish(self) -> None:
        regions = shm.regions()
        if regions is None:
            return
        try:
            regions.write(self.index, pickle.dumps(self.snapshot(), protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # noqa: BLE001 - observability must never take a worker down
            log.exception("cannot publish metrics")

    def snapshot(self) -> dict[str, Any]:
        worker = self.worker
        snap = worker.recorder.snapshot()
        rt = worker.holder.current
        active = waiting = 0
        for conn in worker.connections:
            active += 1
            if conn.current is None and not conn.queue:
                waiting += 1
        snap.update({
            "pid": self.pid,
            "worker": self.index,
            "started": self.started,
            "time": time.time(),
            "config_hash": rt.config_hash,
            "connections": {"active": active, "reading": active - waiting, "waiting": waiting},
            "breakers": self._breakers(),
            "health": self._health(),
            "spans": worker.tracing.spans if worker.tracing is not None else 0,
        })
        return snap

    def _breakers(self) -> list[tuple[str, str, str]]:
        out = []
        for (service, target), breaker in self.worker.resilience.breakers.breakers.items():
            out.append((service, target, BREAKER_STATES[breaker.state]))
        return out

    def _health(self) -> list[tuple[str, str, str, str]]:
        """(upstream, target, address, state) with Kong's states: healthy, unhealthy, healthchecks_off."""
        out = []
        for name, uh in self.worker.health.upstreams.items():
            enabled = uh.spec.enabled
            for label, th in uh.targets.items():
                if not enabled:
                    state = "healthchecks_off"
                else:
                    state = "healthy" if th.healthy else "unhealthy"
                out.append((name, label, f"{th.host}:{th.port}", state))
        return out

"""OpenTelemetry tracing: W3C trace context in and out, one server span per sampled request, OTLP export.

Off unless ``gateway.tracing`` is set; then the worker holds a ``Tracing`` and the proxy calls:

- ``begin(ex)`` when a request's head is complete (``Exchange.start``): reads the client's ``traceparent`` and
  ``tracestate``, decides whether to sample, and returns the field lines to send upstream (b"" when not sampled).
  Sampling is parent-based, as OpenTelemetry's default ``ParentBased(TraceIdRatioBased(ratio))``: a client's
  sampled flag is followed (``parent_based: false`` ignores it), and a request without a valid parent is sampled when
  the low 64 bits of its trace id fall under ``sampling_ratio`` (the same rule as ``TraceIdRatioBased``, so every
  service using it agrees on the same trace). A request that is not sampled costs this decision only: no span is
  made, and the client's ``traceparent`` (if any) is forwarded unchanged.
- For a sampled request, the upstream gets ``traceparent: 00-<trace id>-<gwanmun's span id>-01`` (the client's
  trace id, or a new one) and the client's ``tracestate`` unchanged; the client's own ``traceparent`` is not
  forwarded.
- ``end(ex, now)`` from the recorder when the request ends: the span is made then, with the request's real start
  and end times (so nothing of the SDK runs in between), the ids chosen in ``begin``, and the attributes: method,
  path, host, client address, status, ``http.route`` / ``gwanmun.route``, ``gwanmun.service``, ``gwanmun.upstream``,
  ``gwanmun.request_id``, ``gwanmun.consumer``, ``gwanmun.retries`` and ``error.type``. A 5xx sets the span's status
  to ERROR.

Spans go through the SDK's ``BatchSpanProcessor`` (a background thread in each worker) to the OTLP/HTTP exporter
(protobuf), so exporting never blocks the event loop; when the exporter cannot keep up, spans are dropped, never
requests delayed.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

log = logging.getLogger("gwanmun")

_MASK64 = (1 << 64) - 1
_TRACE_FIELDS = (b"traceparent", b"tracestate")
_HEX = frozenset(b"0123456789abcdef")


_getrandbits = random.getrandbits


class _Otel:
    """The OpenTelemetry names ``_span`` uses, imported once (when the first ``Tracing`` is made), not per span."""

    def load(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace.span import TraceState

        self.set_span_in_context = trace.set_span_in_context
        self.NonRecordingSpan = NonRecordingSpan
        self.SpanContext = SpanContext
        self.SERVER = SpanKind.SERVER
        self.Status = Status
        self.ERROR = StatusCode.ERROR
        self.SAMPLED = TraceFlags(1)
        self.TraceState = TraceState


_otel: Any = _Otel()


class SpanInfo:
    """What ``begin`` decided for a sampled request (on ``Exchange.span``)."""

    __slots__ = ("trace_id", "span_id", "parent_id", "tracestate", "line")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, tracestate: str, line: bytes) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # the client's span id; 0: gwanmun's span is the trace's root
        self.tracestate = tracestate
        self.line = line


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """W3C ``traceparent`` -> (trace id, parent span id, flags), or None if it is not valid (version 00 format;
    later versions are read by their first four fields, as the spec says)."""
    v = value.strip().lower()
    if len(v) < 55 or v[2:3] != b"-" or v[35:36] != b"-" or v[52:53] != b"-":
        return None
    version = v[0:2]
    if version == b"ff" or (version == b"00" and len(v) != 55) or (len(v) > 55 and v[55:56] != b"-"):
        return None
    head = v[:55]
    if not all(c in _HEX for c in head[0:2] + head[3:35] + head[36:52] + head[53:55]):
        return None
    trace_id = int(head[3:35], 16)
    span_id = int(head[36:52], 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(head[53:55], 16)


class _PresetIds:
    """The SDK's id generator, handing out the ids ``begin`` chose (the span is made later, in ``end``)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id or random.getrandbits(128) or 1

    def generate_span_id(self) -> int:
        return self.span_id or random.getrandbits(64) or 1

    def is_trace_id_random(self) -> bool:
        return True


def settings_key(settings: Any) -> Any:
    """What must change for the exporter to be rebuilt on a reload."""
    return None if settings is None else settings.model_dump_json()


class Tracing:
    def __init__(self, settings: Any, worker: int = 0, exporter: Any = None) -> None:
        """``settings``: config.model.TracingSettings; ``exporter``: a span exporter (tests), else OTLP/HTTP."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        from .. import __version__

        _otel.load()
        self.settings = settings
        self.ratio = settings.sampling_ratio
        self.bound = int(settings.sampling_ratio * (1 << 64))
        self.parent_based = settings.parent_based
        self.ids = _PresetIds()
        attributes = {"service.name": settings.service_name, "service.version": __version__,
                      "service.instance.id": f"{settings.service_name}-worker-{worker}"}
        attributes.update(settings.resource_attributes)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers) or None,
                                        timeout=settings.timeout)
        self.provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.create(attributes),
                                       id_generator=self.ids, shutdown_on_exit=False)  # type: ignore[arg-type]
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.flush_interval * 1000.0,
            max_export_batch_size=min(512, settings.max_queue_size)))
        self.tracer = self.provider.get_tracer("gwanmun", __version__)
        self.spans = 0  # made by this worker

    # -- on the request path ----------------------------------------------------------------------------------------
    def begin(self, ex: Any) -> bytes:
        info = ex.span
        if info is not None:  # start() runs again after a fault delay
            return info.line
        tp = ts = b""
        for name, value in ex.headers:
            n = len(name)
            if n == 11 or n == 10:
                low = name.lower()
                if low == b"traceparent":
                    tp = value
                elif low == b"tracestate":
                    ts = ts + b"," + value if ts else value
        parent = parse_traceparent(tp) if tp else None
        if parent is None:
            bound = self.bound
            if not bound:
                return b""
            bits = _getrandbits(64)  # the trace id's low half decides, as TraceIdRatioBased does
            if bits >= bound:
                return b""
            trace_id = (_getrandbits(64) << 64) | bits
            parent_id = 0
        else:
            trace_id, parent_id, flags = parent
            if not (flags & 1 if self.parent_based else (trace_id & _MASK64) < self.bound):
                return b""
        span_id = _getrandbits(64) or 1
        line = b"traceparent: 00-%032x-%016x-01\r\n" % (trace_id, span_id)
        if tp or ts:  # ours replaces the client's; its tracestate goes on (only with its parent)
            ex.headers[:] = [(n, v) for n, v in ex.headers if n.lower() not in _TRACE_FIELDS]
            if ts and parent is not None:
                line += b"tracestate: %b\r\n" % ts
        ex.span = SpanInfo(trace_id, span_id, parent_id, ts.decode("latin-1") if parent is not None else "", line)
        return line

    def end(self, ex: Any, now: float) -> None:
        """The request ended (``now``: perf_counter): make and end its span."""
        info = ex.span
        ex.span = None
        try:
            self._span(ex, info, now)
        except Exception:  # noqa: BLE001 - tracing must never break a request
            log.exception("tracing: cannot record span")

    def _span(self, ex: Any, info: SpanInfo, now: float) -> None:
        o = _otel
        wall = time.time_ns()
        end_ns = wall - int((time.perf_counter() - now) * 1e9)
        start_ns = end_ns - int((now - ex.t0) * 1e9)
        ctx = None
        if info.parent_id:
            state = o.TraceState.from_header([info.tracestate]) if info.tracestate else None
            parent = o.SpanContext(info.trace_id, info.parent_id, is_remote=True, trace_flags=o.SAMPLED,
                                   trace_state=state)
            ctx = o.set_span_in_context(o.NonRecordingSpan(parent))
        route = ex.route
        svc = ex.service
        target = ex.target
        attrs: dict[str, Any] = {
            "http.request.method": ex.method,
            "url.path": ex.path,
            "server.address": ex.host,
            "client.address": ex.client_ip,
            "http.response.status_code": ex.status,
            "gwanmun.request_id": ex.request_id,
        }
        route_name = (route.name or route.id) if route is not None else None
        if route_name:
            attrs["gwanmun.route"] = route_name
            match = ex.match
            attrs["http.route"] = (match.matched_path if match is not None and match.matched_path else route_name)
        if svc is not None and (svc.name or svc.id):
            attrs["gwanmun.service"] = svc.name or svc.id
        if target is not None and ex.t_up:
            attrs["gwanmun.upstream"] = target.label
        ctx_ = ex.ctx
        consumer = ctx_.consumer if ctx_ is not None else None
        if consumer is not None:
            attrs["gwanmun.consumer"] = consumer.username or consumer.custom_id or consumer.id
        if ex.tries:
            attrs["gwanmun.retries"] = ex.tries
        if ex.error:
            attrs["error.type"] = ex.error[:200]
        self.ids.trace_id = info.trace_id
        self.ids.span_id = info.span_id
        try:
            span = self.tracer.start_span(f"{ex.method} {route_name}" if route_name else ex.method, context=ctx,
                                          kind=o.SERVER, attributes=attrs, start_time=start_ns)
        finally:
            self.ids.trace_id = self.ids.span_id = 0
        if ex.status >= 500:
            span.set_status(o.Status(o.ERROR, ex.error[:200] if ex.error else None))
        span.end(end_time=end_ns)
        self.spans += 1

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop the export thread. Blocking: call it
        in a thread from the event loop."""
        try:
            self.provider.shutdown()
        except Exception:  # noqa: BLE001
            log.exception("tracing: shutdown failed")

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

"""``gwanmun status``: a one-screen summary of a running gateway, from its status listener's ``/status``."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DEFAULT_ADDRESS = "127.0.0.1:8100"


def status_url(url: str | None, config: str | None) -> str:
    """The ``/status`` URL: ``--url`` as given, else the config's ``gateway.status_listen``, else the default."""
    if url:
        base = url if "://" in url else "http://" + url
        return base.rstrip("/") + ("" if base.rstrip("/").endswith("/status") else "/status")
    address = DEFAULT_ADDRESS
    if config:
        from ..config import load_file

        address = load_file(config).config.gateway.status_listen
        if address == "off":
            raise SystemExit(f"gwanmun status: {config} sets status_listen: off")
    host, _, port = address.rpartition(":")
    if host in ("", "*", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]",):
        host = "[::1]"
    return f"http://{host}:{port}/status"


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - an operator-given local URL
        return json.loads(r.read())


def _num(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]], out: list[str], indent: str = "  ") -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.append(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                      enumerate(zip(r, widths))).rstrip())


def render(s: dict[str, Any], limit: int = 5) -> str:
    """The summary as text (about 40 lines at most)."""
    out: list[str] = []
    g = s.get("gwanmun", {})
    req = s.get("requests", {})
    lat = req.get("latency_ms", {})
    cfg = s.get("config", {})
    conns = s.get("connections", {})
    window = s.get("window_s")
    out.append(f"gwanmun {g.get('version', '?')}  pid {g.get('pid', '?')}  up {_duration(g.get('uptime_s', 0))}  "
               f"workers {s.get('workers_running', 0)}/{len(s.get('workers', []))}  "
               f"restarts {s.get('worker_restarts', 0)}")
    reloads = cfg.get("reloads", {})
    last = cfg.get("last_reload")
    out.append(f"config {cfg.get('hash', '?')}  generation {cfg.get('generation', 0)}  reloads "
               f"{reloads.get('reloaded', 0)} ok / {reloads.get('unchanged', 0)} unchanged / "
               f"{reloads.get('rejected', 0)} rejected"
               + (f"  (last: {cfg.get('last_reload_result')} at {time.strftime('%H:%M:%S', time.localtime(last))})"
                  if last else ""))
    hashes = {w.get("config_hash") for w in cfg.get("workers", []) if w.get("config_hash")}
    if len(hashes) > 1:
        out.append(f"  workers serve different configs: {', '.join(sorted(hashes))} (a reload in progress?)")
    rate = req.get("rate")
    out.append(f"requests {_num(req.get('total', 0))}  "
               + (f"{_num(rate, ' req/s')} (last {window:.0f} s)" if rate is not None else "rate: -")
               + f"  5xx {_pct(req.get('error_rate'))}  4xx {_pct(req.get('client_error_rate'))}")
    out.append(f"latency p50 {_num(lat.get('p50'), ' ms', 2)}  p95 {_num(lat.get('p95'), ' ms', 2)}  "
               f"p99 {_num(lat.get('p99'), ' ms', 2)}    connections {conns.get('active', 0)} "
               f"({conns.get('reading', 0)} busy, {conns.get('waiting', 0)} idle)")
    for title, key in (("services", "services"), ("routes", "routes"), ("consumers", "consumers")):
        rows = s.get(key) or []
        if not rows:
            continue
        out.append(f"{title}:")
        table = [[title[:-1], "req/s", "requests", "5xx", "4xx", "p95 ms"]]
        for r in rows[:limit]:
            table.append([str(r["name"]), _num(r.get("rate")), _num(r["requests"]), _pct(r.get("error_rate")),
                          _pct(r.get("client_error_rate")), _num(r.get("p95_ms"), "", 2)])
        _table(table, out)
    clients = s.get("clients") or []
    if clients:
        out.append("top clients:")
        table = [["client", "requests", "bytes", "errors"]]
        for c in clients[:limit]:
            table.append([c["client"], _num(c["requests"]), _bytes(c["bytes"]), _num(c["errors"])])
        _table(table, out)
    ups = s.get("upstreams") or []
    if ups:
        bad = [u for u in ups if u["health"] not in ("healthy", "healthchecks_off")]
        out.append(f"upstream targets: {len(ups)} ({len(bad)} not healthy)")
        for u in (bad or ups)[:limit]:
            out.append(f"  {u['upstream']}  {u['target']}  {u['health']}")
    brs = s.get("breakers") or []
    if brs:
        open_ = [b for b in brs if b["state"] != "closed"]
        out.append(f"circuit breakers: {len(brs)} ({len(open_)} not closed)")
        for b in (open_ or brs)[:limit]:
            workers = ", ".join(f"{state} in {n}" for state, n in (b.get("workers") or {}).items())
            out.append(f"  {b['service']}{'/' + b['target'] if b.get('target') else ''}  {b['state']}  "
                       f"(workers: {workers})")
    rl = s.get("ratelimit") or []
    if rl:
        rejected = sum(r["count"] for r in rl if r["decision"] == "rejected")
        total = sum(r["count"] for r in rl)
        out.append(f"rate limits: {total:,} decisions, {rejected:,} rejected")
    return "\n".join(out)


def _duration(seconds: float) -> str:
    seconds = int(seconds or 0)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + f"{m}m{sec:02d}s"


def main(url: str | None, config: str | None, as_json: bool, watch: float | None = None) -> int:
    target = status_url(url, config)
    while True:
        try:
            s = fetch(target)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            print(f"gwanmun status: cannot read {target}: {reason} (is the gateway running, with status_listen "
                  f"on?)", file=sys.stderr)
            return 1
        if as_json:
            print(json.dumps(s, indent=2))
            return 0
        text = render(s)
        if watch:
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            try:
                time.sleep(watch)
            except KeyboardInterrupt:
                return 0
            continue
        print(text)
        return 0

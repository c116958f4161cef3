"""Reloads under load: does a config reload ever fail a request or refuse a connection?

    python bench/reload_under_load.py                       # 20 reloads in 20 s, wrk if installed
    python bench/reload_under_load.py --reloads 100 --duration 30 --workers 4 --routes 5000

Starts an origin (a small uvloop + httptools server in a subprocess), gwanmun in front of it (``--workers`` workers),
and two loads at once: keep-alive clients (wrk ``-c``) and clients opening a new connection per request (wrk with
``Connection: close``). Meanwhile it alternates two valid configs (the second with ``--routes`` more routes, so each
reload compiles a real router) and sends SIGHUP, ``--reloads`` times, evenly spread. Without wrk, Python client
threads do the same more lightly.

Prints reloads sent and their outcomes (applied in every worker; unchanged, when the supervisor got to a SIGHUP after
the file had already moved on to the next version; rejected), the time from SIGHUP to every worker swapped,
requests, failed (non-2xx, read/write errors, timeouts) and refused (connect errors). Exit status 0 when every
reload was answered, none rejected, the last config is the one served, and nothing failed or was refused; 1
otherwise; 2 on a setup error. The integration test ``test_twenty_reloads_under_load_lose_no_request`` is the small,
always-run version of this.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ORIGIN = r'''
import asyncio, sys, httptools, uvloop
BODY = b"reload bench body\n"
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t; self.p = httptools.HttpRequestParser(self)
    def data_received(self, d):
        try:
            self.p.feed_data(d)
        except httptools.HttpParserError:
            self.t.close()
    def on_message_complete(self):
        ka = self.p.should_keep_alive()
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(BODY), b"" if ka else b"Connection: close\r\n") + BODY)
        if not ka:
            self.t.close()
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
'''


def config(origin_port: int, which: str, routes: int, access_log: str, pid_file: str) -> str:
    lines = [
        '_format_version: "3.0"',
        "gateway:",
        '  listen: ["127.0.0.1:0"]',
        f"  access_log: {json.dumps(access_log)}",
        f"  pid_file: {json.dumps(pid_file)}",
        "  config_watch_interval: 0",
        "services:",
        f"  - name: origin-{which}",
        f'    url: "http://127.0.0.1:{origin_port}/{which}"',
        "    routes:",
        '      - {name: all, paths: ["/"]}',
    ]
    for i in range(routes if which == "b" else 0):
        lines.append(f'      - {{name: r{i}, paths: ["/r{i}/x"]}}')
    return "\n".join(lines) + "\n"


def _hash(text: str, path: Path) -> str:
    sys.path.insert(0, str(REPO))
    from gwanmun.config import load_text

    return load_text(text, str(path)).hash[:12]


def events(stderr_path: Path, name: str) -> list[dict]:
    out = []
    for line in stderr_path.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") == name:
            out.append(ev)
    return out


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    print(f"setup error: no {what} within {timeout} s", file=sys.stderr)
    raise SystemExit(2)


WRK_LINE = re.compile(r"(\d+) requests in")
WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(out: str) -> dict:
    m = WRK_LINE.search(out)
    e = WRK_ERRORS.search(out)
    n = WRK_NON2XX.search(out)
    connect, read, write, timeout = (int(x) for x in e.groups()) if e else (0, 0, 0, 0)
    return {"requests": int(m.group(1)) if m else 0, "refused": connect,
            "failed": read + write + timeout + (int(n.group(1)) if n else 0), "raw": out, "parsed": bool(m)}


class PythonLoad:
    """Without wrk: client threads, keep-alive and new-connection ones."""

    def __init__(self, port: int, keepalive: int, fresh: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "failed": 0, "refused": 0}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(k,), daemon=True)
                        for k in [True] * keepalive + [False] * fresh]

    def run(self, keepalive: bool) -> None:
        conn = None
        while not self.stop.is_set():
            key = "requests"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/", headers={} if keepalive else {"Connection": "close"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    key = "failed"
            except ConnectionRefusedError:
                key, conn = "refused", None
            except Exception as exc:
                key, conn = "failed", None
                with self.lock:
                    self.errors.append(repr(exc))
            with self.lock:
                self.counts[key] += 1
            if not keepalive and conn is not None:
                conn.close()
                conn = None

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> dict:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        return dict(self.counts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load; reloads are spread over it")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--routes", type=int, default=1000, help="extra routes in the second config")
    ap.add_argument("--connections", type=int, default=50, help="keep-alive connections (wrk -c)")
    ap.add_argument("--new-connections", type=int, default=8, help="clients opening a connection per request")
    ap.add_argument("--no-wrk", action="store_true", help="use Python client threads even if wrk is installed")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gwanmun-reload-bench-"))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs: list[subprocess.Popen] = []
    try:
        origin = subprocess.Popen([sys.executable, "-c", ORIGIN], stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
        procs.append(origin)
        origin_port = int(origin.stdout.readline())

        cfg = tmp / "gateway.yaml"
        access_log, pid_file = str(tmp / "access.log"), str(tmp / "gw.pid")
        versions = {w: config(origin_port, w, args.routes, access_log, pid_file) for w in "ab"}
        cfg.write_text(versions["a"])
        stderr_path = tmp / "gateway.err"
        with open(stderr_path, "wb") as err:
            gw = subprocess.Popen([sys.executable, "-m", "gwanmun", "run", "--config", str(cfg), "--workers",
                                   str(args.workers)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True)
        procs.append(gw)
        started = wait_for(lambda: events(stderr_path, "started"), 30, "'started' from gwanmun")[0]
        port = int(events(stderr_path, "listening")[0]["address"].rsplit(":", 1)[1])
        print(f"gwanmun pid {gw.pid}, {started['workers']} workers, port {port}; origin port {origin_port}; "
              f"work dir {tmp}")

        wrk = shutil.which("wrk") if not args.no_wrk else None
        d = max(1, round(args.duration))
        loads: list[subprocess.Popen] = []
        python_load = None
        if wrk:
            url = f"http://127.0.0.1:{port}/"
            loads.append(subprocess.Popen([wrk, "-t2", f"-c{args.connections}", f"-d{d}s", url],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            loads.append(subprocess.Popen([wrk, "-t1", f"-c{args.new_connections}", f"-d{d}s", "-H",
                                           "Connection: close", url],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            print(f"load: wrk, {args.connections} keep-alive connections + {args.new_connections} clients with a "
                  f"new connection per request, {d} s")
        else:
            python_load = PythonLoad(port, keepalive=4, fresh=4)
            python_load.start()
            print(f"load: Python threads (4 keep-alive, 4 new-connection), {d} s (wrk not used)")

        t0 = time.monotonic()
        interval = d / (args.reloads + 1)
        for i in range(args.reloads):
            time.sleep(max(0.0, t0 + interval * (i + 1) - time.monotonic()))
            tmp_cfg = cfg.with_suffix(".tmp")
            tmp_cfg.write_text(versions["b" if i % 2 == 0 else "a"])
            os.replace(tmp_cfg, cfg)
            gw.send_signal(signal.SIGHUP)

        if wrk:
            results = [parse_wrk(p.communicate(timeout=d + 60)[0]) for p in loads]
            broken = [r for r in results if not r["parsed"]]
            if broken:  # wrk did not run or print its summary: no verdict either way
                for r in broken:
                    print(f"setup error: wrk printed no summary:\n{r['raw']}", file=sys.stderr)
                return 2
        else:
            time.sleep(max(0.0, t0 + d - time.monotonic()))
            results = [python_load.finish()]
        # every SIGHUP gets one outcome line; under full load a reload can take seconds (see the timing printed)
        outcomes = ("config_reloaded", "config_rejected", "config_unchanged")
        deadline = time.monotonic() + 120
        while (sum(len(events(stderr_path, n)) for n in outcomes) < args.reloads
               and time.monotonic() < deadline and gw.poll() is None):
            time.sleep(0.1)
        applied = events(stderr_path, "config_reloaded")
        rejected = events(stderr_path, "config_rejected")
        unchanged = events(stderr_path, "config_unchanged")
        exited = events(stderr_path, "worker_exited")
        requests = sum(r["requests"] for r in results)
        failed = sum(r["failed"] for r in results)
        refused = sum(r["refused"] for r in results)
        durations = sorted(e["duration_ms"] for e in applied)
        superseded = sum(1 for e in applied if e.get("superseded"))
        print(f"reloads: {args.reloads} sent, {len(applied)} applied in every worker ({superseded} superseded by a "
              f"newer one before done), {len(unchanged)} unchanged (the file had moved on to the next version when its "
              f"SIGHUP was handled), {len(rejected)} rejected; time from SIGHUP to every worker swapped: median "
              f"{durations[len(durations) // 2] if durations else '-'} ms, max {durations[-1] if durations else '-'} ms")
        print(f"requests: {requests}  failed: {failed}  refused: {refused}  worker restarts: {len(exited)}")
        last = versions["b" if (args.reloads - 1) % 2 == 0 else "a"] if args.reloads else None
        final = events(stderr_path, "started")[0]["config_hash"] if not applied else applied[-1]["config_hash"]
        answered = len(applied) + len(unchanged) + len(rejected) == args.reloads
        expected_final = final if last is None else _hash(last, cfg)
        ok = (answered and not rejected and final == expected_final and failed == 0 and refused == 0
              and not exited)
        if not ok:
            for r in results:
                if r.get("raw"):
                    print(r["raw"])
            if python_load is not None and python_load.errors:
                print("first errors:", python_load.errors[:5])
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

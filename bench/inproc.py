"""CPU cost of gwanmun's own code per proxied request, without sockets or the kernel.

    python bench/inproc.py [--requests 200000] [--profile | --instructions] [--variant bench/variants/F.yaml]

Drives the real downstream protocol, exchange and upstream connection with in-memory transports: one GET and one
12-byte upstream response per iteration, through the real config, router and access log. It reports CPU
microseconds per request (process_time, so other load on the machine matters little), with the access log off and
on. This is the number to move when optimising the request path: `bench/run.py` measures the whole (kernel + event
loop + this), and a bare uvloop + httptools proxy (`bench/floor_proxy.py`) shows the floor of the rest.
`--profile` samples it with py-spy (`pip install py-spy`; it sees compiled mypyc functions too).
`--instructions` counts instructions per request under valgrind's callgrind instead (two runs of different length,
differenced, so start-up cancels out): slow, but repeatable to a fraction of a percent whatever else the machine is
doing, which CPU time on a shared 2-core machine is not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time

import uvloop

from gwanmun.config import load_text
from gwanmun.config.compile import compile_runtime
from gwanmun.http.downstream import DownstreamProtocol
from gwanmun.native import HOT_MODULES, status
from gwanmun.server import Worker
from gwanmun.upstream.connection import UpstreamConnection

CONFIG = """_format_version: "3.0"
gateway: {{access_log: "{log}", upstream_keepalive_max_requests: 0}}
services: [{{name: origin, url: "http://127.0.0.1:18081", routes: [{{name: r0, paths: ["/"]}}]}}]
"""
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 23:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n")


class NullTransport:
    def write(self, data): pass
    def is_closing(self): return False
    def get_extra_info(self, key, default=None): return ("127.0.0.1", 50000) if key == "peername" else default
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass


async def measure(n: int, log: str, variant: dict | None = None) -> float:
    request = REQUEST
    if variant is None:
        text = CONFIG.format(log=log)
    else:  # the main config plus a bench/variants file's additions (see bench/run.py --variant)
        from run import variant_config

        gw = {**variant.get("gateway", {}), "upstream_keepalive_max_requests": 0}  # as CONFIG: one connection
        text = variant_config(0, 18081, log, 1, {**variant, "gateway": gw})  # type: ignore[arg-type]
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in variant.get("headers", {}).items())
        request = REQUEST[:-2] + extra + b"\r\n"
    worker = Worker(compile_runtime(load_text(text)), asyncio.get_running_loop())
    down = DownstreamProtocol(worker, 8000)
    down.connection_made(NullTransport())
    pool = worker.pools.get("127.0.0.1", 18081)
    conn = UpstreamConnection(pool)
    conn.connection_made(NullTransport())
    pool.idle.append(conn)
    t = time.process_time()
    for _ in range(n):
        down.data_received(request)
        conn.data_received(RESPONSE)
    if down.current is not None or conn.exchange is not None:
        raise SystemExit("a request did not complete in memory (an access handler that waits? a refused request?)")
    us = (time.process_time() - t) / n * 1e6
    worker.access_log.close()
    return us


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--profile", action="store_true", help="sample a longer run with py-spy --native")
    p.add_argument("--instructions", action="store_true", help="count instructions per request with callgrind")
    p.add_argument("--log", choices=("off", "on", "both"), default="both")
    p.add_argument("--variant", metavar="FILE", help="also measure with a bench/variants file's config and headers")
    p.add_argument("--variant-only", action="store_true", help="with --variant: measure only the variant")
    args = p.parse_args()
    if args.instructions:
        return instructions(("off", "on") if args.log == "both" else (args.log,))
    compiled, stale = status()
    print(f"data plane: {len(compiled)}/{len(HOT_MODULES)} modules compiled" + (f"; STALE: {stale}" if stale else ""))
    uvloop.install()
    if args.profile:
        out = os.path.join(tempfile.gettempdir(), "gwanmun-inproc.svg")
        extra = ["--variant", args.variant, "--variant-only"] if args.variant else []
        child = subprocess.Popen([sys.executable, __file__, "--requests", str(args.requests * 20), *extra])
        time.sleep(1.5)
        subprocess.run(["py-spy", "record", "--native", "-p", str(child.pid), "-d", "5", "-o", out], check=False)
        child.kill()
        print(f"flame graph: {out}")
        return 0
    if args.variant:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from run import load_variants

        variant = load_variants([f"v={args.variant}"])["v"]
        if args.variant_only:
            print(f"{asyncio.run(measure(args.requests, 'off', variant)):.2f} us/request with {args.variant}")
            return 0
        base = asyncio.run(measure(args.requests, "off"))
        with_v = asyncio.run(measure(args.requests, "off", variant))
        print(f"{base:.2f} us/request plain, {with_v:.2f} us/request with {args.variant} "
              f"(+{with_v - base:.2f} us; access log off)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.log in ("off", "both"):
            print(f"{asyncio.run(measure(args.requests, 'off')):.2f} us/request with the access log off")
        if args.log in ("on", "both"):
            on = asyncio.run(measure(args.requests, os.path.join(tmp, "access.log")))
            print(f"{on:.2f} us/request with the access log on")
    return 0


def instructions(logs: tuple[str, ...], short: int = 2000, long: int = 12000) -> int:
    """Instructions per request: callgrind totals of a long and a short run, differenced."""
    for log in logs:
        totals = []
        for n in (short, long):
            run = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
                 "--requests", str(n), "--log", log],
                capture_output=True, text=True, check=True,
            )
            refs = re.search(r"Collected : (\d+)", run.stderr) or re.search(r"refs:\s+([\d,]+)", run.stderr)
            totals.append(int(refs.group(1).replace(",", "")))
        print(f"{(totals[1] - totals[0]) / (long - short):,.0f} instructions/request with the access log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

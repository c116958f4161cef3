"""Slowloris: how much do normal clients still get while 1,000 connections trickle never-ending request heads?

    python bench/slowloris.py                      # 1,000 attackers, 1 worker, wrk if installed
    python bench/slowloris.py --attackers 5000 --workers 2 --header-timeout 10

Starts an origin (a small uvloop + httptools server), gwanmun in front of it, then measures the req/s of normal
keep-alive clients (wrk -c50, or Python client threads without wrk) three times: before the attack, while
``--attackers`` connections each send a request line and then one header line every ``--drip`` seconds (the
slowloris pattern: every connection looks alive, none ever completes its head), and after the attackers are gone.
It also reads the gateway's workers' RSS before and during the attack, and, with a ``--header-timeout`` shorter
than the attack, checks that the gateway cut the attackers (408, then close).

Prints one table; ``--json`` writes the numbers too. Exit status 0 when normal clients kept at least
``--min-ratio`` (default 0.5) of their baseline req/s during the attack, 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
import asyncio, httptools, uvloop
BODY = b"hello world\n"
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t; self.p = httptools.HttpRequestParser(self)
    def data_received(self, d):
        try:
            self.p.feed_data(d)
        except httptools.HttpParserError:
            self.t.close()
    def on_message_complete(self):
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n" + BODY)
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def load(url: str, seconds: float) -> float:
    """req/s of 50 keep-alive connections for ``seconds``."""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds:g}s", url], capture_output=True, text=True).stdout
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not m:
            raise SystemExit(f"wrk printed no summary:\n{out}")
        return float(m.group(1))
    import http.client

    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    count = [0]
    stop = time.monotonic() + seconds

    def client() -> None:
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.monotonic() < stop:
            c.request("GET", "/")
            c.getresponse().read()
            count[0] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / seconds


class Attack:
    def __init__(self, host: str, port: int, n: int, drip: float) -> None:
        self.socks: list[socket.socket] = []
        self.failed = 0
        for _ in range(n):
            try:
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(b"GET / HTTP/1.1\r\nHost: victim\r\n")
                s.setblocking(False)
                self.socks.append(s)
            except OSError:
                self.failed += 1
        self.drip = drip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(self.drip):
            i += 1
            for s in self.socks:
                try:
                    s.send(b"X-Slow-%d: 1\r\n" % i)
                except OSError:
                    pass

    def cut(self) -> int:
        """Attackers the gateway has closed (it answered 408 and closed)."""
        n = 0
        for s in self.socks:
            try:
                data = s.recv(65536)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    n += 1
            except BlockingIOError:
                pass
            except OSError:
                n += 1
        return n

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attackers", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--drip", type=float, default=2.0, help="seconds between an attacker's header lines")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load measurement")
    p.add_argument("--header-timeout", type=float, default=60.0, help="gateway.client_header_timeout")
    p.add_argument("--min-ratio", type=float, default=0.5)
    p.add_argument("--json", help="also write the numbers here")
    a = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.attackers + 200:
        print(f"open-file limit {hard} is too low for {a.attackers} attackers", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="gwanmun-slowloris-"))
    procs: list[subprocess.Popen] = []
    try:
        origin = subprocess.Popen([sys.executable, "-c", ORIGIN], stdout=subprocess.PIPE, text=True)
        procs.append(origin)
        origin_port = int(origin.stdout.readline())
        port = free_port()
        cfg = tmp / "gateway.yaml"
        cfg.write_text(
            '_format_version: "3.0"\n'
            f'gateway: {{listen: ["127.0.0.1:{port}"], access_log: "off", workers: {a.workers}, '
            f'client_header_timeout: {a.header_timeout}, pid_file: "{tmp}/gw.pid"}}\n'
            f'services: [{{name: origin, url: "http://127.0.0.1:{origin_port}", routes: [{{name: r, paths: ["/"]}}]}}]\n'
        )
        gw = subprocess.Popen([sys.executable, "-m", "gwanmun", "run", "--config", str(cfg)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(gw)
        for line in gw.stderr:
            if '"started"' in line:
                break
        else:
            print("gateway did not start", file=sys.stderr)
            return 2
        threading.Thread(target=lambda: [None for _ in gw.stderr], daemon=True).start()
        workers = children(gw.pid) or [gw.pid]
        url = f"http://127.0.0.1:{port}/"

        load(url, 1)  # warm-up
        before = load(url, a.duration)
        rss_before = sum(rss_kb(w) for w in workers)
        t0 = time.monotonic()
        attack = Attack("127.0.0.1", port, a.attackers, a.drip)
        opened = time.monotonic() - t0
        time.sleep(a.drip * 1.5)  # every attacker has dripped at least once
        during = load(url, a.duration)
        rss_during = sum(rss_kb(w) for w in workers)
        cut = 0
        if a.header_timeout < 30:
            time.sleep(max(0.0, a.header_timeout - (time.monotonic() - t0)) + a.drip + 1)
            cut = attack.cut()
        attack.close()
        time.sleep(0.5)
        after = load(url, a.duration)

        ratio = during / before if before else 0.0
        result = {
            "attackers": a.attackers, "attackers_refused": attack.failed, "open_seconds": round(opened, 2),
            "workers": a.workers, "req_s_before": round(before), "req_s_during": round(during),
            "req_s_after": round(after), "during_over_before": round(ratio, 3),
            "rss_kb_before": rss_before, "rss_kb_during": rss_during, "attackers_cut": cut,
            "client_header_timeout": a.header_timeout,
        }
        print(f"{a.attackers} slowloris connections ({attack.failed} refused, opened in {opened:.1f} s), "
              f"{a.workers} worker(s), client_header_timeout {a.header_timeout:g} s")
        print(f"  normal clients: {before:,.0f} req/s before, {during:,.0f} during ({ratio:.2f}x), "
              f"{after:,.0f} after")
        print(f"  gateway RSS: {rss_before / 1024:.1f} MiB before, {rss_during / 1024:.1f} MiB during "
              f"(+{(rss_during - rss_before) / 1024:.1f} MiB, {(rss_during - rss_before) / max(1, a.attackers):.1f} "
              f"kB per attacker)")
        if a.header_timeout < 30:
            print(f"  attackers cut by client_header_timeout: {cut} of {len(attack.socks)}")
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2))
        return 0 if ratio >= a.min_ratio else 1
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM) if proc is procs[-1] else proc.terminate()
            except (ProcessLookupError, PermissionError):
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

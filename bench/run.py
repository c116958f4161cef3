#!/usr/bin/env python3
"""gwanmun throughput/latency benchmark: direct vs nginx vs gwanmun.

    python bench/run.py [--duration 10] [--connections 50] [--rounds 3]
                        [--only small|large] [--quick]
                        [--targets direct,nginx,gwanmun] [--routes 10000]

Starts everything itself on 127.0.0.1 (free ports picked at start), in a
private temp dir, as child processes that are always killed on exit:

* origin  - an nginx instance serving fixed bodies (12 B and 16 KiB),
* nginx   - nginx as a reverse proxy (1 worker, upstream keep-alive,
            JSON access log to a file),
* gwanmun - `python -m gwanmun run --config <generated yaml>` (1 worker,
            access log to a file), plus two more gwanmun instances with
            10 and 10,000 routes for the route-scale measurement.

wrk drives each target in interleaved rounds (direct, nginx, gwanmun,
direct, nginx, gwanmun, ...); the median per target is reported.  The
proxy under test runs on one CPU, origin + wrk on the other (see
bench/README.md).  Prints a Markdown table and writes JSON + Markdown to
bench/results/ (git-ignored).

Exit status: 0 ok, 1 setup error, 2 results INVALID (non-2xx responses or
socket errors seen by wrk), 130 interrupted.
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime as _dt
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"
ORIGIN_TMPL = BENCH_DIR / "nginx-origin.conf.tmpl"
PROXY_TMPL = BENCH_DIR / "nginx.conf.tmpl"

SMALL_BODY = b"hello world\n"  # exactly 12 bytes
assert len(SMALL_BODY) == 12
_LINE = b"gwanmun benchmark body 0123456789 abcdefghijklmnopqrstuvwxyz\n"  # 62 B
LARGE_BODY = (_LINE * (16384 // len(_LINE) + 1))[:16383] + b"\n"
assert len(LARGE_BODY) == 16384

BODIES = {  # name -> (path on origin, body, label)
    "small": ("/small", SMALL_BODY, "12 B"),
    "large": ("/large", LARGE_BODY, "16 KiB"),
}

# Route-scale configuration: the benchmarked route is the *last* route of
# the config (worst case for a router that scans in config order) and has
# the same path in the 10-route and the 10k-route config.
BENCH_ROUTE_PREFIX = "/svc04711"
REGEX_EVERY = 500  # 1 in 500 routes is a regex route (20 of 10k; >= 1 always)
HOST_EVERY = 10  # 1 in 10 routes is restricted to hosts
METHODS_EVERY = 10  # 1 in 10 routes is restricted to methods
ROUTES_PER_SERVICE = 5

BAR = 0.70  # gwanmun >= 0.70 x nginx req/s
GOAL = 0.85
ROUTE_COST_BAR = 0.20  # 10k routes cost at most 20% req/s vs 10 routes

INSTALL_HINT = "install with: apt-get install -y nginx-light wrk   (or: apt-get install -y nginx wrk)"


class SetupError(Exception):
    pass


def log(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# child process management
# --------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _child_preexec() -> None:  # runs in the child between fork and exec
    try:  # if the harness dies hard (SIGKILL), the child gets SIGTERM
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class Children:
    """Every process this harness starts; each runs in its own session /
    process group so that it and its workers can be stopped together."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], *, stdout, stderr, env=None, cwd=None) -> subprocess.Popen:
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
            start_new_session=True, preexec_fn=_child_preexec,
        )
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for _name, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _name, p in reversed(self.procs):
            # SIGKILL the group even if the leader is gone: workers may remain
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log(f"warning: could not reap {_name} (pid {p.pid})")
        self.procs.clear()


# --------------------------------------------------------------------------
# ports, CPU accounting
# --------------------------------------------------------------------------

def pick_free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def assert_port_free(port: int, what: str) -> None:
    if port_accepts(port):
        raise SetupError(f"port 127.0.0.1:{port} (for {what}) is already in use by another process")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        raise SetupError(f"port 127.0.0.1:{port} (for {what}) is busy: {e}") from None
    finally:
        s.close()


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    # rest[0] = state (field 3); ppid = field 4, utime = 14, stime = 15
    return int(rest[1]), int(rest[11]) + int(rest[12])


def system_cpu_ticks() -> dict[str, tuple[int, int]]:
    """{"cpu": (busy, steal), "cpu0": ..., ...} ticks from /proc/stat; busy =
    user+nice+system+irq+softirq (softirq: loopback TCP work, which the
    kernel also charges to the running task)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *vals = line.split()
            v = [int(x) for x in vals]
            out[name] = (v[0] + v[1] + v[2] + v[5] + v[6], v[7] if len(v) > 7 else 0)
    return out


def tree_cpu_ticks(root_pid: int) -> int:
    """utime+stime of root_pid and all its live descendants."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for ent in os.listdir("/proc"):
        if not ent.isdigit():
            continue
        st = _proc_stat(int(ent))
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(ent))
        ticks[int(ent)] = st[1]
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


# --------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------

@dataclass
class Target:
    name: str  # direct | nginx | gwanmun | gwanmun-10 | gwanmun-10000
    port: int
    path_prefix: str = ""  # prepended to /small, /large
    pid: int | None = None  # proxy process (tree) for CPU accounting
    access_log: Path | None = None
    log_lines_total: int = 0
    headers: dict = field(default_factory=dict)  # sent with every request (a variant's credentials)

    def url(self, body: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.path_prefix}{BODIES[body][0]}"


@dataclass
class Measurement:
    target: str
    body: str
    round: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    lat: dict
    errors: dict
    non2xx: int
    proxy_cpu_pct: float | None
    load_cpu_pct: float  # origin + wrk (the load side)
    foreign_cpu_pct: float  # CPU time of processes that are not ours, on the CPUs this target uses (noise)
    steal_pct: float
    log_lines: int | None
    invalid_reasons: list = field(default_factory=list)


def render_template(src: Path, dst: Path, values: dict[str, str]) -> None:
    text = src.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if left:
        raise SetupError(f"{src.name}: unreplaced placeholders {sorted(set(left))}")
    dst.write_text(text)


def yq(s: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(s)


def variant_config(port: int, origin_port: int, access_log: Path, workers: int, variant: dict) -> str:
    """The main comparison's config (one catch-all route) with a variant's additions merged in: ``service`` (fields
    of the service), ``route`` (fields of the route), ``gateway`` (gateway settings) and ``top`` (top-level keys:
    consumers, plugins, upstreams...). JSON is YAML, so the config is written as JSON."""
    svc = {"name": "origin", "url": f"http://127.0.0.1:{origin_port}", **variant.get("service", {}),
           "routes": [{"name": "r0", "paths": ["/"], **variant.get("route", {})}]}
    cfg = {"_format_version": "3.0",
           "gateway": {"workers": workers, "listen": [f"127.0.0.1:{port}"], "access_log": str(access_log),
                       **variant.get("gateway", {})},
           "services": [svc], **variant.get("top", {})}
    return json.dumps(cfg, indent=1)


VARIANT_KEYS = {"service", "route", "gateway", "top", "headers"}


def load_variants(specs: list[str]) -> dict[str, dict]:
    """``--variant NAME=FILE``: FILE is YAML with optional ``service``, ``route``, ``gateway`` and ``top`` mappings,
    and ``headers`` that every request to that variant carries (wrk -H). Two placeholders are filled in when the
    file is read: the string ``@passport-key`` (a new passport signing key), and ``@hs256 <secret> <iss>`` within a
    string (an HS256 JWT with that issuer, valid for a day)."""
    import yaml

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--variant {spec!r}: expected NAME=FILE")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict) or set(data) - VARIANT_KEYS:
            raise SystemExit(f"--variant {spec!r}: the file must be a mapping of {', '.join(sorted(VARIANT_KEYS))}")
        out[name] = _expand(data)
    return out


def _expand(obj):
    if isinstance(obj, dict):
        return {k: _expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v) for v in obj]
    if obj == "@passport-key":
        sys.path.insert(0, str(REPO_DIR))
        from gwanmun.passport import generate_key

        return generate_key("EdDSA", "bench")
    if isinstance(obj, str) and "@hs256 " in obj:
        import jwt

        return re.sub(r"@hs256 (\S+) (\S+)", lambda m: jwt.encode(
            {"iss": m.group(2), "sub": "bench", "exp": int(time.time()) + 86400}, m.group(1), algorithm="HS256"), obj)
    return obj


def gwanmun_config(port: int, origin_port: int, access_log: Path, nroutes: int | None, workers: int = 1) -> str:
    """Kong 3.x declarative config.  nroutes=None: a single catch-all route
    (the main comparison).  Otherwise nroutes realistic routes, the last one
    being the benchmarked route BENCH_ROUTE_PREFIX."""
    lines = [
        '_format_version: "3.0"',
        "gateway:",
        f"  workers: {workers}  # as many as the nginx it is compared with (--workers; the default is one per CPU)",
        f"  listen: [{yq(f'127.0.0.1:{port}')}]",
        f"  access_log: {yq(str(access_log))}",
        "services:",
    ]
    url = yq(f"http://127.0.0.1:{origin_port}")
    if nroutes is None:
        lines += [
            "  - name: origin",
            f"    url: {url}",
            "    routes:",
            "      - name: r0",
            '        paths: ["/"]',
        ]
        return "\n".join(lines) + "\n"

    bench_idx = int(BENCH_ROUTE_PREFIX[4:])
    others = [i for i in range(nroutes) if i != bench_idx][: nroutes - 1]
    for k in range(0, len(others), ROUTES_PER_SERVICE):
        chunk = others[k:k + ROUTES_PER_SERVICE]
        lines += [f"  - name: svc-{k // ROUTES_PER_SERVICE:05d}", f"    url: {url}", "    routes:"]
        for j, i in enumerate(chunk):
            n = k + j  # position in the config: drives the shape mix
            lines.append(f"      - name: r{i:05d}")
            if n % REGEX_EVERY == 7:  # n=7 exists for 10 routes too: >= 1 regex route always
                # Kong 3.x regex path: leading "~"
                lines.append(f"        paths: [{yq(f'~/svc{i:05d}/items/[0-9]+/(details|history)$')}]")
            else:
                lines.append(f"        paths: [{yq(f'/svc{i:05d}')}]")
            if n % HOST_EVERY == 3:
                hosts = [f"api{i:05d}.example.com"]
                if n % (HOST_EVERY * 2) == 3:
                    hosts.append(f"*.tenant{i:05d}.example.net")
                lines.append(f"        hosts: [{', '.join(yq(h) for h in hosts)}]")
            if n % METHODS_EVERY == 5:
                lines.append('        methods: ["GET", "POST"]')
            if n % 4 == 1:
                lines.append("        strip_path: false")
    lines += [
        "  - name: bench",
        f"    url: {url}",
        "    routes:",
        "      - name: bench",
        f"        paths: [{yq(BENCH_ROUTE_PREFIX)}]",
        # origin serves both /svc04711/small and /small, so this works
        # whether or not the gateway strips the path
        "        strip_path: false",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children = Children()
        self.tmp = Path(tempfile.mkdtemp(prefix="gwanmun-bench-"))
        # nginx workers drop to an unprivileged user when started as root:
        # they must be able to read the docroot.
        os.chmod(self.tmp, 0o755)
        (self.tmp / "tmp").mkdir()
        self.targets: dict[str, Target] = {}
        self.origin_pid: int | None = None
        self.pin = not args.no_pin
        self.nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        self.wrk = shutil.which("wrk")
        self.taskset = shutil.which("taskset")
        self.warnings: list[str] = []
        self._cleaned = False
        self.discarded: list[Measurement] = []  # noisy measurements that were repeated

    # -- helpers -----------------------------------------------------------
    def pinned(self, cpu: int, argv: list[str]) -> list[str]:
        if not self.pin:
            return argv
        return [self.taskset, "-c", str(cpu)] + argv

    def check_tools(self) -> None:
        missing = [n for n, p in (("nginx", self.nginx), ("wrk", self.wrk)) if not p]
        if missing:
            raise SetupError(f"missing: {', '.join(missing)} - {INSTALL_HINT}")
        if self.pin:
            if not self.taskset:
                raise SetupError("taskset not found (apt-get install -y util-linux), or pass --no-pin")
            cpus = os.sched_getaffinity(0)
            need = {self.args.proxy_cpu, self.args.load_cpu}
            if not need <= cpus or len(need) < 2:
                raise SetupError(
                    f"need two distinct usable CPUs for pinning (--proxy-cpu {self.args.proxy_cpu}, "
                    f"--load-cpu {self.args.load_cpu}; available: {sorted(cpus)}); or pass --no-pin")
            # the harness itself sleeps while wrk runs; keep it off the proxy CPU
            os.sched_setaffinity(0, {self.args.load_cpu})

    def wait_ready(self, name: str, proc: subprocess.Popen, port: int, timeout: float, logs: list[Path]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SetupError(f"{name} exited with status {proc.returncode} during startup\n" + self.tails(logs))
            if port_accepts(port):
                return
            time.sleep(0.05)
        raise SetupError(f"{name} did not accept connections on 127.0.0.1:{port} within {timeout:.0f}s\n" + self.tails(logs))

    @staticmethod
    def tails(paths: list[Path], n: int = 40) -> str:
        out = []
        for p in paths:
            try:
                lines = p.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                out.append(f"--- {p.name} (last {min(n, len(lines))} lines) ---")
                out.extend(lines[-n:])
        return "\n".join(out) if out else "(no output captured)"

    # -- starting things ---------------------------------------------------
    def start_nginx(self, name: str, tmpl: Path, cpu: int, values: dict[str, str], port: int) -> subprocess.Popen:
        conf = self.tmp / f"{name}.conf"
        render_template(tmpl, conf, {"PREFIX": str(self.tmp), "PORT": str(port), **values})
        err = self.tmp / f"{name}-main-error.log"
        out = self.tmp / f"{name}.stderr"
        argv = self.pinned(cpu, [
            self.nginx, "-p", f"{self.tmp}/", "-c", str(conf), "-e", str(err),
            "-g", f"daemon off; master_process on; pid {self.tmp}/{name}.pid;",
        ])
        assert_port_free(port, name)
        with open(out, "wb") as fh:
            p = self.children.start(name, argv, stdout=fh, stderr=subprocess.STDOUT)
        self.wait_ready(name, p, port, 10, [out, err, self.tmp / f"{name}-error.log"])
        return p

    def start_gwanmun(self, name: str, port: int, nroutes: int | None, variant: dict | None = None) -> Target:
        access_log = self.tmp / f"{name}-access.log"
        cfg = self.tmp / f"{name}.yaml"
        if variant is not None:
            cfg.write_text(variant_config(port, self.origin_port, access_log, self.args.workers, variant))
        else:
            cfg.write_text(gwanmun_config(port, self.origin_port, access_log, nroutes, self.args.workers))
        cmd = self.args.gwanmun_cmd.format(python=shlex.quote(sys.executable), config=shlex.quote(str(cfg)))
        argv = self.pinned(self.args.proxy_cpu, shlex.split(cmd))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        out = self.tmp / f"{name}.out"
        assert_port_free(port, name)
        log(f"  starting {name}: {' '.join(argv)}")
        with open(out, "wb") as fh:
            p = self.children.start(name, argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_DIR))
        try:
            self.wait_ready(name, p, port, self.args.startup_timeout, [out])
        except SetupError as e:
            raise SetupError(f"gwanmun failed to start ({name}, config {cfg}):\n{e}") from None
        prefix = BENCH_ROUTE_PREFIX if nroutes is not None else ""
        headers = {str(k): str(v) for k, v in (variant or {}).get("headers", {}).items()}
        return Target(name, port, prefix, p.pid, access_log, headers=headers)

    def setup(self) -> None:
        a = self.args
        self.check_tools()
        want_gw = "gwanmun" in a.targets
        want_routes = want_gw and a.routes > 0
        names = ["origin", "nginx", "gwanmun", "gwanmun-r10", "gwanmun-rN"]
        names += [f"gwanmun+{v}" for v in a.variants]
        ports = dict(zip(names, pick_free_ports(len(names))))
        self.origin_port = ports["origin"]

        docroot = self.tmp / "docroot"
        for d in (docroot, docroot / BENCH_ROUTE_PREFIX.strip("/")):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
            for _name, (path, body, _label) in BODIES.items():
                f = d / path.strip("/")
                f.write_bytes(body)
                os.chmod(f, 0o644)

        log(f"work dir: {self.tmp}")
        log(f"  starting origin (nginx) on 127.0.0.1:{ports['origin']}")
        p = self.start_nginx("origin", ORIGIN_TMPL, a.load_cpu, {"DOCROOT": str(docroot)}, ports["origin"])
        self.origin_pid = p.pid
        if "direct" in a.targets:
            self.targets["direct"] = Target("direct", ports["origin"])
        if "nginx" in a.targets:
            log(f"  starting nginx proxy on 127.0.0.1:{ports['nginx']}")
            acc = self.tmp / "nginx-access.log"
            p = self.start_nginx("nginx", PROXY_TMPL, a.proxy_cpu,
                                 {"ORIGIN_PORT": str(ports["origin"]), "ACCESS_LOG": str(acc),
                                  "WORKERS": str(a.workers),
                                  "ACCESS_LOG_OPTS": (f" buffer={a.nginx_log_buffer} flush=100ms"
                                                      if a.nginx_log_buffer else "")},
                                 ports["nginx"])
            self.targets["nginx"] = Target("nginx", ports["nginx"], "", p.pid, acc)
        if want_gw:
            self.targets["gwanmun"] = self.start_gwanmun("gwanmun", ports["gwanmun"], None)
            for v, data in a.variants.items():
                self.targets[f"gwanmun+{v}"] = self.start_gwanmun(f"gwanmun+{v}", ports[f"gwanmun+{v}"], None, data)
        if want_routes:
            self.targets["gwanmun-r10"] = self.start_gwanmun("gwanmun-r10", ports["gwanmun-r10"], 10)
            self.targets["gwanmun-rN"] = self.start_gwanmun("gwanmun-rN", ports["gwanmun-rN"], a.routes)
        self.verify_all()

    def verify_all(self) -> None:
        """One plain GET per target and body: status 200 and the exact body."""
        for t in self.targets.values():
            bodies = ["small"] if t.name.startswith("gwanmun-r") else self.bodies()
            for b in bodies:
                path, expected, _ = BODIES[b]
                url_path = t.path_prefix + path
                try:
                    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
                    c.request("GET", url_path, headers=t.headers)
                    r = c.getresponse()
                    got = r.read()
                    c.close()
                except Exception as e:  # noqa: BLE001
                    raise SetupError(f"{t.name}: GET {url_path} failed: {e!r}") from None
                if r.status != 200 or got != expected:
                    raise SetupError(
                        f"{t.name}: GET {url_path} -> {r.status}, {len(got)} body bytes "
                        f"(expected 200 and the exact {len(expected)}-byte body); first bytes: {got[:200]!r}")
        log("  all targets answer 200 with the exact bodies")

    def bodies(self) -> list[str]:
        return [self.args.only] if self.args.only else ["small", "large"]

    # -- wrk ---------------------------------------------------------------
    def run_wrk(self, url: str, seconds: float, headers: dict | None = None) -> tuple[dict, str, float]:
        a = self.args
        extra = [x for k, v in (headers or {}).items() for x in ("-H", f"{k}: {v}")]
        argv = self.pinned(a.load_cpu, [
            self.wrk, f"-t{a.threads}", f"-c{a.connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "5s", *extra, "-s", str(WRK_SCRIPT), url,
        ])
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        except subprocess.TimeoutExpired:
            raise SetupError(f"wrk hung: {' '.join(argv)}") from None
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if cp.returncode != 0:
            raise SetupError(f"wrk failed ({cp.returncode}): {' '.join(argv)}\n{cp.stdout}\n{cp.stderr}")
        m = re.search(r"^WRKJSON (\{.*\})$", cp.stdout, re.M)
        if not m:
            raise SetupError(f"no WRKJSON line in wrk output (is {WRK_SCRIPT} intact?):\n{cp.stdout}\n{cp.stderr}")
        res = json.loads(m.group(1))
        m2 = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", cp.stdout)
        res["non2xx_text"] = int(m2.group(1)) if m2 else 0
        return res, cp.stdout, wrk_cpu_s

    @staticmethod
    def count_and_truncate(path: Path | None) -> int | None:
        if path is None:
            return None
        try:
            n = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    n += chunk.count(b"\n")
            os.truncate(path, 0)  # keep /tmp from filling up
            return n
        except FileNotFoundError:
            return 0

    def check_alive(self) -> None:
        """Every child (origin, proxies) must still run; else say who died and show its output."""
        for name, p in self.children.procs:
            if p.poll() is not None:
                rc = p.returncode
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                logs = [self.tmp / f for f in (f"{name}.out", f"{name}.stderr", f"{name}-main-error.log",
                                               f"{name}-error.log")]
                raise SetupError(
                    f"{name} (pid {p.pid}) {how} during the benchmark. A clean exit after a 'stopping' "
                    f"line means something sent it SIGTERM/SIGINT from outside (e.g. a `pkill -f gwanmun` "
                    f"elsewhere on this machine).\n" + self.tails(logs, 15))

    def measure(self, t: Target, body: str, rnd: int) -> Measurement:
        self.check_alive()
        try:
            return self._measure(t, body, rnd)
        except SetupError:
            self.check_alive()  # a dead child explains a failing wrk better than wrk does
            raise

    def _measure(self, t: Target, body: str, rnd: int) -> Measurement:
        url = t.url(body)
        if self.args.warmup > 0:
            w, _out, _ = self.run_wrk(url, self.args.warmup, t.headers)
            if w["errors"]["status"] or w["non2xx_text"]:
                self.warnings.append(f"{t.name}/{body} round {rnd}: warm-up saw {w['errors']['status']} non-2xx/3xx")
        time.sleep(0.2)
        self.count_and_truncate(t.access_log)  # drop warm-up lines
        wall0 = time.monotonic()
        p0 = tree_cpu_ticks(t.pid) if t.pid else 0
        o0 = tree_cpu_ticks(self.origin_pid)
        s0 = system_cpu_ticks()
        res, out, wrk_cpu = self.run_wrk(url, self.args.duration, t.headers)
        s1 = system_cpu_ticks()
        p1 = tree_cpu_ticks(t.pid) if t.pid else 0
        o1 = tree_cpu_ticks(self.origin_pid)
        wall = time.monotonic() - wall0
        time.sleep(0.2)  # let a buffered access log catch up
        lines = self.count_and_truncate(t.access_log)

        dur = res["duration_us"] / 1e6
        lat = {k: v / 1000.0 for k, v in res["latency_us"].items()}  # -> ms
        errs = res["errors"]
        non2xx = max(errs["status"], res["non2xx_text"])
        reasons = []
        if non2xx:
            reasons.append(f"{non2xx} non-2xx/3xx responses")
        sock = {k: v for k, v in errs.items() if k != "status" and v}
        if sock:
            reasons.append("socket errors " + ", ".join(f"{k}={v}" for k, v in sock.items()))
        if res["requests"] == 0:
            reasons.append("no requests completed")
        if t.access_log is not None and lines is not None and lines < 0.9 * res["requests"]:
            self.warnings.append(f"{t.name}/{body} round {rnd}: access log {t.access_log.name} got {lines} lines "
                                 f"for {res['requests']} requests - is access logging really on?")
        ms = Measurement(
            target=t.name, body=body, round=rnd, requests=res["requests"], duration_s=dur,
            rps=res["requests"] / dur if dur else 0.0, p50_ms=lat["p50"], p99_ms=lat["p99"], lat=lat,
            errors=errs, non2xx=non2xx,
            proxy_cpu_pct=(100.0 * (p1 - p0) / _CLK_TCK / wall) if t.pid else None,
            load_cpu_pct=100.0 * ((o1 - o0) / _CLK_TCK + wrk_cpu) / wall,
            foreign_cpu_pct=0.0, steal_pct=0.0,
            log_lines=lines, invalid_reasons=reasons,
        )
        # Noise: CPU time used by processes that are not ours, on the CPUs
        # that matter for this target (pinned: the load CPU, plus the proxy
        # CPU for a proxy; unpinned: all CPUs).
        ours = {"load": (o1 - o0) + wrk_cpu * _CLK_TCK, "proxy": float(p1 - p0)}
        if self.pin:
            lc, pc = f"cpu{self.args.load_cpu}", f"cpu{self.args.proxy_cpu}"
            foreign = [(s1[lc][0] - s0[lc][0]) - ours["load"]]
            steal = [s1[lc][1] - s0[lc][1]]
            if t.pid:
                foreign.append((s1[pc][0] - s0[pc][0]) - ours["proxy"])
                steal.append(s1[pc][1] - s0[pc][1])
            ms.foreign_cpu_pct = max(0.0, max(foreign) * 100.0 / _CLK_TCK / wall)
            ms.steal_pct = max(steal) * 100.0 / _CLK_TCK / wall
        else:
            ms.foreign_cpu_pct = max(0.0, ((s1["cpu"][0] - s0["cpu"][0]) - ours["load"] - ours["proxy"])
                                     * 100.0 / _CLK_TCK / wall)
            ms.steal_pct = (s1["cpu"][1] - s0["cpu"][1]) * 100.0 / _CLK_TCK / wall
        flag = "  INVALID: " + "; ".join(reasons) if reasons else ""
        cpu = f" proxy-cpu {ms.proxy_cpu_pct:5.1f}%" if ms.proxy_cpu_pct is not None else " " * 17
        log(f"  r{rnd} {body:5s} {t.name:14s} {ms.rps:10,.0f} req/s  p50 {ms.p50_ms:7.3f} ms  "
            f"p99 {ms.p99_ms:7.3f} ms {cpu}  load-cpu {ms.load_cpu_pct:5.1f}%  "
            f"other {ms.foreign_cpu_pct:4.0f}%{flag}")
        return ms

    def measure_quiet(self, t: Target, body: str, rnd: int) -> Measurement:
        """measure(), repeated (up to --noise-retries times) while other
        processes ate more than --max-noise % of a CPU we use.  If every
        attempt was noisy, the least noisy one is kept (chosen by noise, not
        by req/s, so no target is favoured)."""
        a = self.args
        attempts: list[Measurement] = []
        for attempt in range(a.noise_retries + 1):
            ms = self.measure(t, body, rnd)
            attempts.append(ms)
            if max(ms.foreign_cpu_pct, ms.steal_pct) <= a.max_noise:
                break
            if attempt < a.noise_retries:
                log(f"    noisy (other processes {ms.foreign_cpu_pct:.0f}%, steal {ms.steal_pct:.0f}%): "
                    f"repeating in {a.noise_wait:g} s")
                time.sleep(a.noise_wait)
        best = min(attempts, key=lambda m: max(m.foreign_cpu_pct, m.steal_pct))
        self.discarded.extend(m for m in attempts if m is not best)
        if max(best.foreign_cpu_pct, best.steal_pct) > a.max_noise:
            self.warnings.append(
                f"{t.name}/{body} round {rnd}: other processes used {best.foreign_cpu_pct:.0f}% of a CPU "
                f"(steal {best.steal_pct:.0f}%) even in the least noisy of {len(attempts)} attempts - noisy machine")
        elif len(attempts) > 1:
            log(f"    kept attempt {attempts.index(best) + 1} (least noisy)")
        return best

    def run(self) -> list[Measurement]:
        a = self.args
        main = [n for n in ("direct", "nginx", "gwanmun") if n in self.targets]
        main += [n for n in self.targets if n.startswith("gwanmun+")]  # variants, interleaved with the rest
        scale = [n for n in ("gwanmun-r10", "gwanmun-rN") if n in self.targets]
        results: list[Measurement] = []
        for rnd in range(1, a.rounds + 1):
            log(f"round {rnd}/{a.rounds}")
            for body in self.bodies():
                for name in main:
                    results.append(self.measure_quiet(self.targets[name], body, rnd))
            for name in scale:  # routing cost does not depend on the body: small only
                results.append(self.measure_quiet(self.targets[name], "small", rnd))
        return results

    def cleanup(self) -> None:
        self.children.stop_all()
        if self._cleaned:
            return
        self._cleaned = True
        if self.args.keep_tmp:
            log(f"kept work dir {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# summarising
# --------------------------------------------------------------------------

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarise(results: list[Measurement], max_noise: float) -> dict:
    """Median per (body, target) over rounds: over the quiet rounds (noise <=
    max_noise) if there is at least one, else over all rounds.  Invalid
    rounds are never dropped: they make the whole run invalid anyway."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in results:
        groups.setdefault((m.body, m.target), []).append(m)
    summ = {}
    for (body, target), all_ms in groups.items():
        quiet = [m for m in all_ms if max(m.foreign_cpu_pct, m.steal_pct) <= max_noise]
        ms = quiet or all_ms
        rps = [m.rps for m in ms]
        cpu = [m.proxy_cpu_pct for m in ms if m.proxy_cpu_pct is not None]
        summ.setdefault(body, {})[target] = {
            "rps": med(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms": med([m.p50_ms for m in ms]), "p99_ms": med([m.p99_ms for m in ms]),
            "proxy_cpu_pct": med(cpu) if cpu else None,
            "load_cpu_pct": med([m.load_cpu_pct for m in ms]),
            "other_cpu_pct": med([m.foreign_cpu_pct for m in ms]),
            "other_cpu_pct_max": max(m.foreign_cpu_pct for m in ms),
            "rounds": len(all_ms),
            "quiet_rounds": len(quiet),
            "rounds_used": [m.round for m in ms],
            "invalid": sorted({r for m in all_ms for r in m.invalid_reasons}),
        }
    return summ


def ratio(summ: dict, body: str, a: str, b: str) -> float | None:
    try:
        return summ[body][a]["rps"] / summ[body][b]["rps"]
    except (KeyError, ZeroDivisionError):
        return None


def verdict(r: float | None) -> str:
    if r is None:
        return ""
    if r >= GOAL:
        return "PASS (meets goal 0.85)"
    if r >= BAR:
        return "PASS (bar 0.70; goal 0.85 not met)"
    return "FAIL (bar 0.70)"


def fmt_ms(x: float) -> str:
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def noise_cell(s: dict) -> str:
    return f"{s['other_cpu_pct']:.0f}% ({s['quiet_rounds']}/{s['rounds']} quiet)"


def noisy(summ: dict, body: str, targets) -> bool:
    """True if a target has no quiet round at all."""
    return any(summ.get(body, {}).get(t, {}).get("quiet_rounds", 1) == 0 for t in targets)


def markdown(summ: dict, meta: dict, nroutes: int) -> str:
    out = []
    a = meta["args"]
    out.append(f"#### {meta['date']} - gwanmun {meta['git_commit']}")
    out.append("")
    out.append(
        f"wrk -t{a['threads']} -c{a['connections']}, {a['duration']} s x {a['rounds']} interleaved rounds "
        f"(median), warm-up {a['warmup']} s; {meta['pinning']}; {meta['cpu_model']}; "
        f"{meta['nginx_version']}, {meta['wrk_version']}, Python {meta['python']}; "
        f"nginx access_log {'buffer=' + a['nginx_log_buffer'] + ' flush=100ms' if a.get('nginx_log_buffer') else 'unbuffered'}, "
        f"gwanmun access log as configured by gwanmun.")
    out.append("")
    out.append("| body | target | req/s (median) | min-max | p50 | p99 | proxy CPU | noise | vs nginx | vs direct |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for body in ("small", "large"):
        if body not in summ:
            continue
        for t in ("direct", "nginx", "gwanmun"):
            s = summ[body].get(t)
            if not s:
                continue
            vn = ratio(summ, body, t, "nginx") if t == "gwanmun" else None
            vd = ratio(summ, body, t, "direct") if t != "direct" else None
            cpu = f"{s['proxy_cpu_pct']:.0f}%" if s["proxy_cpu_pct"] is not None else "-"
            bad = " **INVALID**" if s["invalid"] else ""
            out.append(
                f"| {BODIES[body][2]} | {t}{bad} | {s['rps']:,.0f} | {s['rps_min']:,.0f}-{s['rps_max']:,.0f} | "
                f"{fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | {cpu} | {noise_cell(s)} | "
                f"{f'{vn:.2f}' if vn is not None else '-'} | {f'{vd:.2f}' if vd is not None else '-'} |")
    out.append("")
    lines = []
    for body in ("small", "large"):
        if body not in summ:
            continue
        gn = ratio(summ, body, "gwanmun", "nginx")
        gd = ratio(summ, body, "gwanmun", "direct")
        nd = ratio(summ, body, "nginx", "direct")
        parts = []
        if gn is not None:
            caveat = (" - NOT CONCLUSIVE: noisy machine" if noisy(summ, body, ("nginx", "gwanmun"))
                      else "")
            parts.append(f"gwanmun/nginx **{gn:.2f}** {verdict(gn)}{caveat}")
        if gd is not None:
            parts.append(f"gwanmun/direct {gd:.2f}")
        if nd is not None:
            parts.append(f"nginx/direct {nd:.2f}")
        if parts:
            lines.append(f"- {BODIES[body][2]}: " + "; ".join(parts))
    if "small" in summ and "gwanmun-r10" in summ["small"] and "gwanmun-rN" in summ["small"]:
        s10, sN = summ["small"]["gwanmun-r10"], summ["small"]["gwanmun-rN"]
        r = sN["rps"] / s10["rps"] if s10["rps"] else float("nan")
        cost = 1 - r
        ok = "PASS" if cost <= ROUTE_COST_BAR else "FAIL"
        out.append(f"Route scale (gwanmun, 12 B body, benchmarked route `{BENCH_ROUTE_PREFIX}` defined last):")
        out.append("")
        out.append("| routes | req/s (median) | min-max | p50 | p99 | proxy CPU | noise |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for n, s in ((10, s10), (nroutes, sN)):
            bad = " **INVALID**" if s["invalid"] else ""
            cpu = f"{s['proxy_cpu_pct']:.0f}%" if s["proxy_cpu_pct"] is not None else "-"
            out.append(f"| {n:,}{bad} | {s['rps']:,.0f} | {s['rps_min']:,.0f}-{s['rps_max']:,.0f} | "
                       f"{fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | {cpu} | {noise_cell(s)} |")
        out.append("")
        caveat = (" - NOT CONCLUSIVE: noisy machine"
                  if noisy(summ, "small", ("gwanmun-r10", "gwanmun-rN")) else "")
        lines.append(f"- {nroutes:,} routes / 10 routes: **{r:.2f}** (costs {cost * 100:.1f}%) "
                     f"{ok} (bar: at most {ROUTE_COST_BAR * 100:.0f}%){caveat}")
    variants = sorted({t for body in summ.values() for t in body if t.startswith("gwanmun+")})
    if variants:
        out.append("")
        out.append("Variants (same route, with a variant's config added), against plain gwanmun in the same run:")
        out.append("")
        out.append("| body | variant | req/s (median) | min-max | p50 | p99 | proxy CPU | noise | vs gwanmun | vs nginx |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for body in ("small", "large"):
            for t in variants:
                s = summ.get(body, {}).get(t)
                if not s:
                    continue
                vg, vn = ratio(summ, body, t, "gwanmun"), ratio(summ, body, t, "nginx")
                cpu = f"{s['proxy_cpu_pct']:.0f}%" if s["proxy_cpu_pct"] is not None else "-"
                bad = " **INVALID**" if s["invalid"] else ""
                out.append(
                    f"| {BODIES[body][2]} | {t}{bad} | {s['rps']:,.0f} | {s['rps_min']:,.0f}-{s['rps_max']:,.0f} | "
                    f"{fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | {cpu} | {noise_cell(s)} | "
                    f"{f'{vg:.3f}' if vg is not None else '-'} | {f'{vn:.2f}' if vn is not None else '-'} |")
    out.extend(lines)
    out.append("")
    out.append("_proxy CPU: CPU used by the proxy process tree (100% = its whole core). noise: CPU used by "
               "processes outside the benchmark on the cores this target uses, and how many rounds were quiet "
               "(at most --max-noise); medians are over the quiet rounds when there is one._")
    return "\n".join(out) + "\n"


def tool_version(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (cp.stdout + cp.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "?"


def collect_meta(args: argparse.Namespace, b: Bench) -> dict:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "gwanmun"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            commit += "+dirty"
    except Exception:  # noqa: BLE001
        commit = "?"
    pin = (f"proxy on CPU {args.proxy_cpu}, origin + wrk on CPU {args.load_cpu}" if not args.no_pin
           else "no CPU pinning") + (f"; {args.workers} workers each for nginx and gwanmun" if args.workers > 1 else "")
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "git_commit": commit,
        "cpu_model": cpu_model,
        "ncpu": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx_version": tool_version([b.nginx, "-v"]).replace("nginx version: ", ""),
        "wrk_version": " ".join(tool_version([b.wrk, "-v"]).split()[:2]),
        "pinning": pin,
        "args": {k: v for k, v in vars(args).items()},
        "bench_route": BENCH_ROUTE_PREFIX,
    }


# --------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="seconds per measurement (default 10; --quick: 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: wrk has one CPU)")
    p.add_argument("--rounds", type=int, help="interleaved rounds, median reported (default 3; --quick: 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each measurement (default 1)")
    p.add_argument("--only", choices=["small", "large"], help="only one body size")
    p.add_argument("--quick", action="store_true", help="short run: 3 s x 2 rounds")
    p.add_argument("--targets", default="direct,nginx,gwanmun",
                   help="comma list of direct,nginx,gwanmun (default all)")
    p.add_argument("--routes", type=int, default=10000,
                   help="route count for the route-scale test vs 10 routes (0 = skip; default 10000)")
    p.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxy under test (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU for origin + wrk (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes for nginx and gwanmun alike (default 1); more than 1 implies --no-pin")
    p.add_argument("--nginx-log-buffer", metavar="SIZE",
                   help="give nginx's access_log buffer=SIZE flush=100ms (e.g. 64k, like gwanmun's "
                        "batched log); default: unbuffered, one write per request")
    p.add_argument("--gwanmun-cmd", default="{python} -m gwanmun run --config {config}",
                   help="command to start gwanmun ({python}, {config} substituted)")
    p.add_argument("--startup-timeout", type=float, default=60, help="seconds to wait for gwanmun to listen")
    p.add_argument("--max-noise", type=float, default=10,
                   help="repeat a measurement when other processes used more than this %% of a CPU we use (default 10)")
    p.add_argument("--noise-retries", type=int, default=2, help="how often to repeat a noisy measurement (default 2)")
    p.add_argument("--noise-wait", type=float, default=3, help="seconds to wait before repeating one (default 3)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FILE",
                   help="also measure gwanmun with FILE's additions (YAML: service/route/top mappings), "
                        "interleaved, reported against plain gwanmun; repeatable (e.g. bench/variants/*.yaml)")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be at least 1")
    if a.workers > 1:
        a.no_pin = True  # several workers share the machine's CPUs with the load side
    if a.duration is None:
        a.duration = 3.0 if a.quick else 10.0
    if a.rounds is None:
        a.rounds = 2 if a.quick else 3
    if a.warmup is None:
        a.warmup = 1.0
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.variants = load_variants(a.variant)
    bad = set(a.targets) - {"direct", "nginx", "gwanmun"}
    if bad or not a.targets:
        p.error(f"--targets: unknown {sorted(bad)}; choose from direct,nginx,gwanmun")
    if a.duration < 1 or a.rounds < 1 or a.connections < 1 or a.threads < 1:
        p.error("--duration, --rounds, --connections, --threads must be >= 1")
    if a.threads > a.connections:
        p.error("--threads must not exceed --connections")
    if a.nginx_log_buffer and not re.fullmatch(r"[0-9]+[kKmM]?", a.nginx_log_buffer):
        p.error("--nginx-log-buffer: a size like 64k")
    if a.routes and a.routes < 11:
        p.error("--routes must be > 10 (or 0 to skip)")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    # SIGINT explicitly too: a shell starting us in the background sets it to SIG_IGN
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(bench.cleanup)
    try:
        bench.setup()
        meta = collect_meta(args, bench)
        t0 = time.monotonic()
        results = bench.run()
        elapsed = time.monotonic() - t0
    except SetupError as e:
        log(f"\nERROR: {e}")
        if bench.children.procs:  # something ran: keep configs and logs for a look
            args.keep_tmp = True
        return 1
    except KeyboardInterrupt:
        log("\ninterrupted; stopping children")
        return 130
    finally:
        bench.cleanup()

    summ = summarise(results, args.max_noise)
    md = markdown(summ, meta, args.routes)
    invalid = sorted({f"{m.target}/{m.body} round {m.round}: {r}" for m in results for r in m.invalid_reasons})
    if invalid:
        md = ("> **INVALID RUN** - wrk saw errors; do not use these numbers:\n"
              + "".join(f"> - {x}\n" for x in invalid) + "\n" + md)
    notes = []
    for body in summ:
        for t, s in summ[body].items():
            if (t != "direct" and s["proxy_cpu_pct"] is not None and s["proxy_cpu_pct"] < 85
                    and s["other_cpu_pct_max"] < 10):
                notes.append(f"{t}/{body}: proxy CPU only {s['proxy_cpu_pct']:.0f}% (load side "
                             f"{s['load_cpu_pct']:.0f}%): the proxy was not the bottleneck, its req/s is a lower bound")
    for n in notes + bench.warnings:
        md += f"\n> note: {n}"
    if notes or bench.warnings:
        md += "\n"

    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    payload = {
        "meta": meta, "valid": not invalid, "invalid_reasons": invalid, "elapsed_s": elapsed,
        "bars": {"gwanmun_vs_nginx_bar": BAR, "gwanmun_vs_nginx_goal": GOAL, "route_cost_bar": ROUTE_COST_BAR},
        "summary": summ,
        "ratios": {
            body: {k: ratio(summ, body, *k.split("/")) for k in ("gwanmun/nginx", "gwanmun/direct", "nginx/direct")}
            for body in summ
        },
        "route_scale": (
            {"routes": args.routes,
             "ratio": summ["small"]["gwanmun-rN"]["rps"] / summ["small"]["gwanmun-r10"]["rps"]}
            if "small" in summ and "gwanmun-rN" in summ["small"] and "gwanmun-r10" in summ["small"] else None),
        "runs": [vars(m) for m in results],
        "discarded_noisy_runs": [vars(m) for m in bench.discarded],
        "warnings": bench.warnings + notes,
    }
    jpath = out_dir / f"bench-{stamp}.json"
    jpath.write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / f"bench-{stamp}.md").write_text(md)
    print()
    print(md)
    log(f"wrote {jpath} and {jpath.with_suffix('.md')} ({elapsed:.0f} s of measuring)")
    if invalid:
        log("\n" + "!" * 72 + "\n!!! INVALID RUN: wrk reported non-2xx/3xx responses or socket errors !!!\n"
            + "\n".join(f"!!!   {x}" for x in invalid) + "\n" + "!" * 72)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

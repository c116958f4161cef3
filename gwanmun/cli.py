"""Command line: ``gwanmun run | reload | health | validate | version | migrations | config | ...``."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _run(args: argparse.Namespace) -> int:
    from .process.signals import SignalPipe

    signals = SignalPipe()  # before the heavy imports: a SIGHUP from now on is a reload, not the end of the process
    from .process.supervisor import run

    control = _control_plane(args.config)  # the Admin API and the config store, when gateway.admin is set
    if isinstance(control, int):
        return control
    try:
        return run(args.config, workers=args.workers, pid_file=args.pid_file, signals=signals)
    finally:
        if control is not None:
            from .process import reload

            reload.config_source = None
            control.stop()


def _control_plane(config_path: str):
    """Start the control plane (gwanmun/admin/control.py) if the config file sets ``gateway.admin``, and make it
    the supervisor's config source. None: no Admin API (or an invalid file: the supervisor reports it); an int: the
    exit code of a control plane that could not start."""
    from .config import load_file
    from .errors import ConfigError

    try:
        node = load_file(config_path)
    except ConfigError:
        return None
    if node.config.gateway.admin is None:
        return None
    import logging

    from .admin.control import ControlPlane, StartError
    from .process import reload
    from .server import event, setup_logging

    setup_logging()
    control = ControlPlane(config_path, node)
    try:
        control.start()
    except StartError as exc:
        event("admin_start_failed", logging.ERROR, file=config_path, error=str(exc))
        return 1
    reload.config_source = control
    return control


def _workers(value: str) -> int | str:
    from .config.model import MAX_WORKERS

    if value == "auto":
        return value
    if value.isdigit() and 1 <= int(value) <= MAX_WORKERS:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_WORKERS} or 'auto', got {value!r}")


def _reload(args: argparse.Namespace) -> int:
    """Find the running gateway through its pid file and send it SIGHUP (what nginx -s reload does)."""
    import os
    import signal

    from .process import pidfile

    if args.pid_file:
        path = pidfile.resolve(None, args.pid_file)
    elif args.config:
        # validate first, as `nginx -t && nginx -s reload`: the errors show here, not only in the gateway's log
        if _validate(argparse.Namespace(file=args.config), quiet=True) != 0:
            print(f"not reloading: {args.config} is invalid (the running gateway would reject it too)",
                  file=sys.stderr)
            return 1
        from .config import load_file

        path = pidfile.resolve(load_file(args.config).config.gateway.pid_file)
        if path is None:
            print(f"{args.config} sets pid_file: off; send SIGHUP to the gateway's supervisor process instead",
                  file=sys.stderr)
            return 1
    else:
        path = pidfile.default_path()
    try:
        pid = pidfile.find_running(path)
        os.kill(pid, signal.SIGHUP)
    except pidfile.PidFileError as exc:
        print(f"gwanmun reload: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gwanmun reload: cannot signal the gateway: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to gwanmun (pid {pid}, from {path}); its log says config_reloaded, config_unchanged or "
          "config_rejected")
    return 0


def _validate(args: argparse.Namespace, quiet: bool = False) -> int:
    from .config import load_file
    from .config.compile import compile_runtime
    from .errors import ConfigError

    try:
        loaded = load_file(args.file)
        compile_runtime(loaded)
    except ConfigError as exc:
        n = len(exc.issues)
        print(str(exc), file=sys.stderr)
        print(f"{args.file}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if quiet:
        return 0
    cfg = loaded.config
    routes = sum(len(s.routes) for s in cfg.services) + len(cfg.routes)
    print(
        f"{args.file}: ok ({len(cfg.services)} services, {routes} routes, {len(cfg.upstreams)} upstreams; "
        f"hash {loaded.hash[:12]})"
    )
    return 0


def _health(args: argparse.Namespace) -> int:
    """Print each upstream's targets and their health, from the status files the workers write next to the pid
    file (``<pid file>.health.<worker>.json``, see gwanmun/upstream/health.py)."""
    import glob
    import json
    import os
    import time

    from .process import pidfile

    if args.pid_file:
        path = pidfile.resolve(None, args.pid_file)
    elif args.config:
        from .config import load_file

        path = pidfile.resolve(load_file(args.config).config.gateway.pid_file)
        if path is None:
            print(f"{args.config} sets pid_file: off; target health is published next to the pid file only",
                  file=sys.stderr)
            return 1
    else:
        path = pidfile.default_path()
    try:
        pidfile.find_running(path)
    except pidfile.PidFileError as exc:
        print(f"gwanmun health: {exc}", file=sys.stderr)
        return 1
    reports = []
    for name in sorted(glob.glob(glob.escape(path) + ".health.*.json")):
        try:
            with open(name, "rb") as f:
                report = json.load(f)
            os.kill(int(report["pid"]), 0)  # a file left by a worker that is gone is not shown
        except (OSError, ValueError, KeyError, TypeError):
            continue
        reports.append(report)
    if not reports:
        print(f"gwanmun health: no worker has published its status yet (looked for {path}.health.*.json)",
              file=sys.stderr)
        return 1
    reports.sort(key=lambda r: r.get("worker", 0))
    if args.json:
        print(json.dumps({"workers": reports}, indent=2))
        return 0
    # upstream -> target -> [(worker, entry)]
    table: dict[str, dict[str, list]] = {}
    checks: dict[str, str] = {}
    for r in reports:
        for up, info in r.get("upstreams", {}).items():
            kinds = [k for k in ("active", "passive") if info.get(k)]
            checks[up] = ", ".join(kinds) + " checks" if kinds else "no health checks"
            for t in info.get("targets", []):
                table.setdefault(up, {}).setdefault(t["target"], []).append((r.get("worker", 0), t))
    if not table:
        print("no upstreams")
        return 0
    for up in table:
        print(f"upstream {up} ({checks[up]}; {len(reports)} worker{'s' if len(reports) != 1 else ''})")
        width = max(len(t) for t in table[up])
        for target, entries in table[up].items():
            healths = {e["health"] for _, e in entries}
            if len(healths) == 1:
                health = healths.pop()
            else:
                health = "mixed: " + ", ".join(f"worker {w} {e['health']}" for w, e in entries)
            worst = max(entries, key=lambda we: we[1].get("since", 0))[1]
            note = ""
            if worst.get("reason"):
                since = time.strftime("%H:%M:%S", time.localtime(worst.get("since", 0)))
                note = f"  ({worst['reason']} at {since})"
            print(f"  {target.ljust(width)}  {health}{note}")
    return 0


def _status(args: argparse.Namespace) -> int:
    """A one-screen summary from the running gateway's status listener (``/status``; docs/observability.md)."""
    from .observability.statuscli import main

    return main(args.url, args.config, args.json, args.watch)


def _version(args: argparse.Namespace) -> int:
    from .native import HOT_MODULES, status

    compiled, stale = status()
    print(f"gwanmun {__version__} (data plane: {len(compiled)}/{len(HOT_MODULES)} modules compiled with mypyc)")
    for name in stale:
        print(f"warning: {name} is older than its source; reinstall (pip install -e .) to rebuild", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwanmun", description="gwanmun API gateway")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="serve a declarative config")
    r.add_argument("--config", "-c", required=True, help="declarative YAML file (Kong 3.x format)")
    r.add_argument("--workers", "-w", type=_workers, default=None,
                   help="worker processes: a number or 'auto' (one per CPU); overrides gateway.workers")
    r.add_argument("--pid-file", default=None,
                   help="where to write the supervisor's pid ('off': nowhere); overrides gateway.pid_file")
    r.set_defaults(func=_run)
    rl = sub.add_parser("reload", help="make a running gateway reload its config (SIGHUP through its pid file)")
    which = rl.add_mutually_exclusive_group()
    which.add_argument("--pid-file", help="the running gateway's pid file (default: as in `run`)")
    which.add_argument("--config", "-c", help="validate this config, then use its gateway.pid_file")
    rl.set_defaults(func=_reload)
    h = sub.add_parser("health", help="print each upstream's targets and their health (from the running gateway)")
    which = h.add_mutually_exclusive_group()
    which.add_argument("--pid-file", help="the running gateway's pid file (default: as in `run`)")
    which.add_argument("--config", "-c", help="use this config's gateway.pid_file")
    h.add_argument("--json", action="store_true", help="print every worker's status as JSON")
    h.set_defaults(func=_health)
    st = sub.add_parser("status", help="a one-screen summary of the running gateway: traffic, latency, errors, "
                                       "top clients, upstream health, circuits, config (from its status listener)")
    which = st.add_mutually_exclusive_group()
    which.add_argument("--url", help="the status listener, e.g. 127.0.0.1:8100 (default: gateway.status_listen "
                                     "of --config, else 127.0.0.1:8100)")
    which.add_argument("--config", "-c", help="use this config's gateway.status_listen")
    st.add_argument("--json", action="store_true", help="print the whole /status document")
    st.add_argument("--watch", type=float, metavar="SECONDS", default=None, help="refresh every SECONDS")
    st.set_defaults(func=_status)
    v = sub.add_parser("validate", help="check a config file and list every error")
    v.add_argument("file")
    v.set_defaults(func=_validate)
    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=_version)
    d = sub.add_parser("demo", help="run the memo demo: token service, memo service and the gateway (:8000)")
    d.add_argument("--port", type=int, default=8000, help="the gateway's port")
    d.add_argument("--token-port", type=int, default=9101)
    d.add_argument("--memo-port", type=int, default=9102)
    d.add_argument("--check", action="store_true", help="run the demo's flow once, report, and stop")
    d.set_defaults(func=_demo)
    hp = sub.add_parser("hash-password", help="print a bcrypt hash for basicauth_credentials (reads stdin)")
    hp.add_argument("--scheme", choices=["bcrypt", "argon2"], default="bcrypt")
    hp.set_defaults(func=_hash_password)
    hk = sub.add_parser("hash-key", help="print the sha256$ hash of an API key for keyauth_credentials.key_hash")
    hk.set_defaults(func=_hash_key)
    pk = sub.add_parser("passport-key", help="print a new passport signing key (YAML for gateway.passport.keys)")
    pk.add_argument("--algorithm", choices=["EdDSA", "ES256"], default="EdDSA")
    pk.add_argument("--kid", default=None)
    pk.set_defaults(func=_passport_key)
    from .admin.commands import add_parsers

    add_parsers(sub)  # migrations up|status, config history|diff|rollback|dump|sync (docs/admin.md)
    return p


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo

    return demo(args.port, args.token_port, args.memo_port, args.check)


def _read_secret(prompt: str) -> str:
    import getpass

    value = getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not value:
        raise SystemExit("gwanmun: nothing read")
    return value


def _hash_password(args: argparse.Namespace) -> int:
    from .auth.secrets import PasswordPolicy, hash_password

    print(hash_password(_read_secret("password: "), PasswordPolicy(scheme=args.scheme)))
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from .auth.secrets import hash_key

    print(hash_key(_read_secret("key: ")))
    return 0


def _passport_key(args: argparse.Namespace) -> int:
    from .passport import print_new_key

    print_new_key(args.algorithm, args.kid)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

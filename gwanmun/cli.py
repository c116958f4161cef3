"""Command line: ``gwanmun run | validate | version``."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _run(args: argparse.Namespace) -> int:
    from .server import run

    return run(args.config)


def _validate(args: argparse.Namespace) -> int:
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
    cfg = loaded.config
    routes = sum(len(s.routes) for s in cfg.services) + len(cfg.routes)
    print(
        f"{args.file}: ok ({len(cfg.services)} services, {routes} routes, {len(cfg.upstreams)} upstreams; "
        f"hash {loaded.hash[:12]})"
    )
    return 0


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
    r.set_defaults(func=_run)
    v = sub.add_parser("validate", help="check a config file and list every error")
    v.add_argument("file")
    v.set_defaults(func=_validate)
    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

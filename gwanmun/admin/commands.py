"""``gwanmun migrations up|status`` and ``gwanmun config history|diff|rollback|dump|sync``: the store, from a shell.

They open the store directly (no running node needed): the one a node's config file names (``--config``, its
``gateway.admin``), or ``--database postgresql://...`` / ``--database sqlite:///path`` (or a ``.sqlite3``/``.db``
path). A commit is seen by running nodes as any other: PostgreSQL notifies them, SQLite nodes poll the file. Changes
are validated as the Admin API validates them (with the node's gateway settings when ``--config`` is given), so an
invalid one is refused with every error and nothing is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
import time
from typing import Any


class CliError(Exception):
    pass


def _author(args: argparse.Namespace) -> str:
    if getattr(args, "author", None):
        return args.author
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()} (cli)"


def _open(args: argparse.Namespace):
    """(store, the node's gateway settings as data) from --config or --database."""
    from ..config.model import AdminSettings
    from ..store import make_store
    from .control import gateway_data

    if args.database:
        url = args.database
        if url.startswith(("postgres://", "postgresql://")):
            settings = AdminSettings(database="postgres", postgres_dsn=url)
        else:
            path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
            settings = AdminSettings(database="sqlite", sqlite_path=path)
        return make_store(settings, path if settings.database == "sqlite" else "."), {}
    if not args.config:
        raise CliError("name the store: --config <the node's config file> or --database <url>")
    from ..config import load_file
    from ..errors import ConfigError

    try:
        node = load_file(args.config)
    except ConfigError as exc:
        raise CliError(f"{exc}\n{args.config}: invalid") from None
    settings = node.config.gateway.admin
    if settings is None:
        raise CliError(f"{args.config} has no gateway.admin block: its config file is its only config")
    if settings.database == "off":
        raise CliError(f"{args.config} is DB-less (gateway.admin.database: off): edit the file, or use POST /config")
    return make_store(settings, args.config), gateway_data(node)


def run(coro_fn, args: argparse.Namespace) -> int:
    from ..store import StoreError

    async def main() -> int:
        store, gateway = _open(args)
        try:
            await store.open()
            if coro_fn is not migrations_up:
                pending = await store.pending_migrations()
                if pending:
                    raise CliError(f"{store.describe} needs migrations ({', '.join(pending)}): run "
                                   "`gwanmun migrations up` first")
            return await coro_fn(store, gateway, args)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (CliError, StoreError) as exc:
        print(f"gwanmun: {exc}", file=sys.stderr)
        return 1


async def migrations_up(store, gateway, args) -> int:
    done = await store.migrate()
    if done:
        print(f"{store.describe}: applied {', '.join(done)}")
    else:
        print(f"{store.describe}: up to date")
    return 0


async def migrations_status(store, gateway, args) -> int:
    pending = await store.pending_migrations()
    print(f"{store.describe}: " + (f"pending: {', '.join(pending)}" if pending else "up to date"))
    return 1 if pending else 0


def _summary(changes: list[dict]) -> str:
    ops = {"create": 0, "update": 0, "delete": 0}
    for c in changes:
        ops[c["op"]] = ops.get(c["op"], 0) + 1
    return f"+{ops['create']} ~{ops['update']} -{ops['delete']}"


async def history(store, gateway, args) -> int:
    items = await store.history(args.limit)
    if args.json:
        print(json.dumps([v.meta() for v in items], indent=2))
        return 0
    if not items:
        print("no versions yet")
        return 0
    print(f"{'version':>7}  {'time (UTC)':19}  {'changes':12}  {'author':30}  message")
    for v in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created_at))
        print(f"{v.version:>7}  {when:19}  {_summary(v.changes):12}  {v.author[:30]:30}  {v.message}")
    return 0


async def _get(store, number: int):
    v = await store.get(number)
    if v is None:
        raise CliError(f"no version {number} in {store.describe}")
    return v


async def diff(store, gateway, args) -> int:
    from ..store import doc as docs

    if args.to is None:
        to = await _get(store, args.version)
        from_no = to.parent or 0
    else:
        to = await _get(store, args.to)
        from_no = args.version
    old = await _get(store, from_no) if from_no else None
    text = docs.text_diff(old.doc if old else None, to.doc, f"version {from_no}", f"version {to.version}")
    for c in docs.changes(old.doc if old else None, to.doc):
        extra = f" ({', '.join(c['fields'])})" if c.get("fields") else ""
        print(f"{c['op']:6} {docs.SINGULAR[c['kind']]} {c['name']}{extra}")
    if text:
        print()
        print(text, end="")
    return 0


async def rollback(store, gateway, args) -> int:
    from .control import rollback_in
    from .entities import ApiError

    try:
        v = await rollback_in(store, args.version, gateway, author=_author(args))
    except ApiError as exc:
        raise CliError(_api_error_text(exc)) from None
    if v is None:
        print(f"the current config is already version {args.version}'s: nothing to do")
    else:
        print(f"version {v.version}: rollback to version {args.version} ({_summary(v.changes)})")
    return 0


async def dump(store, gateway, args) -> int:
    from ..store import doc as docs

    if args.version is not None:
        v = await _get(store, args.version)
    else:
        v = await store.latest()
    document = v.doc if v is not None and v.doc is not None else docs.empty()
    text = f"# gwanmun config, version {v.version if v else 0} of {store.describe}\n" + docs.to_yaml(
        docs.nest(document, keep_timestamps=args.with_timestamps, defaults=args.with_defaults))
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote version {v.version if v else 0} to {args.output}", file=sys.stderr)
    return 0


async def sync(store, gateway, args) -> int:
    from ..config import load_file
    from ..errors import ConfigError
    from .control import check_declarative, file_entities, replace_in, validate
    from ..store import doc as docs
    from .entities import ApiError

    try:
        loaded = load_file(args.file)
    except ConfigError as exc:
        raise CliError(f"{exc}\n{args.file}: invalid, nothing applied") from None
    if loaded.config.gateway.model_fields_set:
        print(f"note: {args.file}'s gateway: block is not stored (each node's settings stay in its own file)",
              file=sys.stderr)
    data = file_entities(loaded)
    try:
        check_declarative(data, gateway, args.file)
        if args.dry_run:
            head = await store.latest()
            flat = docs.flatten(data, head.doc if head else None)
            normalized = await validate(flat, gateway, declarative=True)
            changes = docs.changes(head.doc if head else None, normalized)
            for c in changes:
                print(f"{c['op']:6} {docs.SINGULAR[c['kind']]} {c['name']}")
            print(f"dry run: {_summary(changes)}, nothing applied")
            return 0
        v = await replace_in(store, data, gateway, author=_author(args), message=f"sync {args.file}")
    except ApiError as exc:
        raise CliError(_api_error_text(exc)) from None
    if v is None:
        print("in sync: nothing to do")
    else:
        for c in v.changes:
            print(f"{c['op']:6} {docs.SINGULAR[c['kind']]} {c['name']}")
        print(f"version {v.version}: {_summary(v.changes)}")
    return 0


def _api_error_text(exc: Any) -> str:
    errors = exc.body.get("errors")
    if errors:
        return "\n".join(f"{e['path']}: {e['message']}" for e in errors) + "\nnothing applied"
    return str(exc.body.get("message"))


def add_parsers(sub) -> None:
    """The subcommands, on the main parser's subparsers."""

    def store_args(p) -> None:
        which = p.add_mutually_exclusive_group()
        which.add_argument("--config", "-c", help="a node's config file (its gateway.admin names the store)")
        which.add_argument("--database", "-d", help="postgresql://user@host/db, sqlite:///path or a .sqlite3 path")

    m = sub.add_parser("migrations", help="the config store's schema: `migrations up` applies what is pending")
    msub = m.add_subparsers(dest="action", required=True)
    up = msub.add_parser("up", help="apply pending schema migrations")
    store_args(up)
    up.set_defaults(func=lambda a: run(migrations_up, a))
    st = msub.add_parser("status", help="list pending migrations (exit 1 if any)")
    store_args(st)
    st.set_defaults(func=lambda a: run(migrations_status, a))

    c = sub.add_parser("config", help="config versions in the store: history, diff, rollback, dump, sync")
    csub = c.add_subparsers(dest="action", required=True)
    h = csub.add_parser("history", help="list versions, newest first")
    store_args(h)
    h.add_argument("--limit", "-n", type=int, default=20)
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=lambda a: run(history, a))
    d = csub.add_parser("diff", help="what version A changed, or what changed from version A to version B")
    store_args(d)
    d.add_argument("version", type=int)
    d.add_argument("to", type=int, nargs="?")
    d.set_defaults(func=lambda a: run(diff, a))
    r = csub.add_parser("rollback", help="make version N's config current again (as a new version)")
    store_args(r)
    r.add_argument("version", type=int)
    r.add_argument("--author", help="recorded in the history (default: user@host)")
    r.set_defaults(func=lambda a: run(rollback, a))
    du = csub.add_parser("dump", help="write the current (or --version N) config as a declarative file")
    store_args(du)
    du.add_argument("--output", "-o", help="file to write (default: stdout)")
    du.add_argument("--version", type=int)
    du.add_argument("--with-timestamps", action="store_true", help="keep created_at/updated_at")
    du.add_argument("--with-defaults", action="store_true", help="write every field, defaults included")
    du.set_defaults(func=lambda a: run(dump, a))
    sy = csub.add_parser("sync", help="make the store's config this file's (as decK sync): one new version")
    store_args(sy)
    sy.add_argument("file")
    sy.add_argument("--dry-run", action="store_true", help="show what would change, apply nothing")
    sy.add_argument("--author", help="recorded in the history (default: user@host)")
    sy.set_defaults(func=lambda a: run(sync, a))

"""The `codeproxy` command: serve, proxy, executor, db, keys, token."""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codeproxy import logs
from codeproxy.web import server_options
from executor.settings import ExecutorSettings
from proxy.settings import Settings

# How long running requests get to finish when the service is told to stop.
GRACEFUL_SHUTDOWN_SECONDS = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("serve", "all-in-one: API service with an in-process executor (the default setup)"),
        ("proxy", "the API service alone, using the executors in CODEPROXY_EXECUTOR_URL"),
        ("executor", "the execution service alone (internal API, token-protected)"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", help="listen address (default: CODEPROXY_HOST)")
        p.add_argument("--port", type=int, help="listen port (default: CODEPROXY_PORT)")
    db = sub.add_parser("db", help="the database schema (CODEPROXY_DATABASE_URL)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the schema to this version (safe to run twice)")
    db_sub.add_parser("current", help="print the schema revision of the database")
    db_sub.add_parser(
        "revision", help="(development) write a migration for changed models"
    ).add_argument("message")
    keys = sub.add_parser("keys", help="manage stored API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("create", help="create a key for a tenant").add_argument("name")
    keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    keys_sub.add_parser("revoke", help="revoke a key by id").add_argument("id")
    token = sub.add_parser("token", help="mint a JWT for a tenant")
    token.add_argument("--sub", required=True, help="the tenant")
    token.add_argument("--ttl", type=float, default=60.0, help="lifetime in minutes (default 60)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    if args.command in ("serve", "proxy", "executor"):
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = settings.model_copy(update=overrides)
    if args.command == "serve":
        if settings.workers > 1:
            sys.exit(
                "codeproxy serve stays one process: its executor runs inside it and holds the "
                "sandboxes in that process's memory, which other worker processes could not "
                "reach. For several workers run `codeproxy executor` and `codeproxy proxy` "
                "(README: Scaling out), or unset CODEPROXY_WORKERS."
            )
        _serve(settings, all_in_one=True)
    elif args.command == "proxy":
        if not settings.executor_url:
            sys.exit("codeproxy proxy needs CODEPROXY_EXECUTOR_URL (and CODEPROXY_INTERNAL_TOKEN)")
        _serve(settings, all_in_one=False)
    elif args.command == "executor":
        _executor(settings)
    elif args.command == "db":
        _db(settings, args)
    elif args.command == "keys":
        asyncio.run(_keys(settings, args))
    elif args.command == "token":
        from proxy.auth import mint_token

        print(mint_token(settings.signing_key(), sub=args.sub, ttl_minutes=args.ttl))


def _executor_settings(settings: Settings) -> ExecutorSettings:
    return ExecutorSettings().model_copy(update={"host": settings.host, "port": settings.port})


def _serve(settings: Settings, *, all_in_one: bool) -> None:
    import uvicorn

    # Migrate once, here, before any worker starts; each worker then only checks.
    asyncio.run(_prepare_database(settings))
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # Logging is ours (text or JSON); the access line comes from MetricsMiddleware,
        # without the query strings uvicorn would log (signed links carry secrets there).
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        **server_options(),
    }
    if not all_in_one and settings.workers > 1:
        _share_metrics_between_workers()
        uvicorn.run("codeproxy.cli:proxy_app", factory=True, workers=settings.workers, **options)
        return
    from prometheus_client import CollectorRegistry

    from proxy.app import create_app

    registry = CollectorRegistry()
    executor = None
    if all_in_one:
        from executor.service import ExecutorService

        executor = ExecutorService(_executor_settings(settings), registry=registry)
    uvicorn.run(create_app(settings, executor=executor, registry=registry), **options)


def proxy_app() -> Any:
    """The app of one worker process of `codeproxy proxy` (uvicorn calls this in each)."""
    from proxy.app import create_app

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)


def _share_metrics_between_workers() -> None:
    """prometheus-client's multiprocess mode: every worker writes its values to files in one
    directory, and whichever worker answers /metrics adds them all up. Set before any worker
    imports prometheus-client; emptied first, so values of an earlier run do not count."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        directory = tempfile.mkdtemp(prefix="codeproxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        import atexit

        atexit.register(shutil.rmtree, directory, True)


async def _prepare_database(settings: Settings) -> None:
    from storage.db import create_engine
    from storage.migrate import SchemaError, prepare

    engine = create_engine(settings.database)
    try:
        await prepare(engine, migrate=settings.auto_migrate)
    except SchemaError as exc:
        sys.exit(f"codeproxy: {exc}")
    finally:
        await engine.dispose()


def _db(settings: Settings, args: argparse.Namespace) -> None:
    from storage.migrate import new_revision

    if args.db_command == "revision":
        print(new_revision(args.message))
        return
    asyncio.run(_db_async(settings, args.db_command))


async def _db_async(settings: Settings, command: str) -> None:
    from storage.db import create_engine
    from storage.migrate import SchemaError, current_revision, head, upgrade

    engine = create_engine(settings.database)
    try:
        if command == "upgrade":
            await upgrade(engine)
        revision = await current_revision(engine)
        print(f"{revision or 'empty'} (this version of codeproxy needs {head()})")
    except SchemaError as exc:
        sys.exit(f"codeproxy: {exc}")
    finally:
        await engine.dispose()


def _executor(settings: Settings) -> None:
    from executor.server import serve

    serve(_executor_settings(settings))


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    from storage.db import create_engine, session_factory
    from storage.keys import create_key, list_keys, revoke_key
    from storage.migrate import SchemaError, prepare

    engine = create_engine(settings.database)
    try:
        try:
            await prepare(engine, migrate=settings.auto_migrate)
        except SchemaError as exc:
            sys.exit(f"codeproxy: {exc}")
        async with session_factory(engine)() as db:
            if args.keys_command == "create":
                row, key = await create_key(db, tenant=args.name)
                print(f"id: {row.id}\ntenant: {row.tenant}\nkey: {key}")
                print("Keep the key now: it is stored only as a hash.", file=sys.stderr)
            elif args.keys_command == "list":
                for row in await list_keys(db):
                    state = "revoked" if row.revoked_at else "active"
                    print(f"{row.id}\t{row.tenant}\t{row.prefix}…\t{state}")
            else:
                if await revoke_key(db, key_id=args.id) is None:
                    sys.exit(f"no key with id {args.id}")
                print(f"revoked {args.id}")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    main()

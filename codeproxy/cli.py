"""The `codeproxy` command: serve, proxy, executor, keys, token."""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from codeproxy.web import server_options
from executor.settings import ExecutorSettings
from proxy.settings import Settings


def main(argv: Sequence[str] | None = None) -> None:
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
    keys = sub.add_parser("keys", help="manage stored API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("create", help="create a key for a tenant").add_argument("name")
    keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    keys_sub.add_parser("revoke", help="revoke a key by id").add_argument("id")
    token = sub.add_parser("token", help="mint a JWT for a tenant")
    token.add_argument("--sub", required=True, help="the tenant")
    token.add_argument("--ttl", type=float, default=60.0, help="lifetime in minutes (default 60)")
    args = parser.parse_args(argv)

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command in ("serve", "proxy", "executor"):
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        settings = settings.model_copy(update=overrides)
    if args.command == "serve":
        _serve(settings, all_in_one=True)
    elif args.command == "proxy":
        if not settings.executor_url:
            sys.exit("codeproxy proxy needs CODEPROXY_EXECUTOR_URL (and CODEPROXY_INTERNAL_TOKEN)")
        _serve(settings, all_in_one=False)
    elif args.command == "executor":
        _executor(settings)
    elif args.command == "keys":
        asyncio.run(_keys(settings, args))
    elif args.command == "token":
        from proxy.auth import mint_token

        print(mint_token(settings.signing_key(), sub=args.sub, ttl_minutes=args.ttl))


def _executor_settings(settings: Settings) -> ExecutorSettings:
    return ExecutorSettings().model_copy(update={"host": settings.host, "port": settings.port})


def _serve(settings: Settings, *, all_in_one: bool) -> None:
    import uvicorn

    from proxy.app import create_app

    executor = None
    if all_in_one:
        from executor.service import ExecutorService

        executor = ExecutorService(_executor_settings(settings))
    app = create_app(settings, executor=executor)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        **server_options(),
    )


def _executor(settings: Settings) -> None:
    from executor.server import serve

    serve(_executor_settings(settings))


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    from storage.db import create_engine, create_tables, session_factory
    from storage.keys import create_key, list_keys, revoke_key

    engine = create_engine(settings.database)
    try:
        await create_tables(engine)
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

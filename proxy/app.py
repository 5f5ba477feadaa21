"""The API service's app factory and lifespan."""

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from codeproxy.metrics import MetricsMiddleware
from codeproxy.metrics import render as render_metrics
from codeproxy.web import RequestIdMiddleware
from executor.api import Executor
from proxy import assistants
from proxy.assistants.manager import RunManager
from proxy.auth import Authenticator
from proxy.deps import Services
from proxy.errors import install_handlers, render_unexpected
from proxy.fleet import Fleet
from proxy.jsonutil import JSONResponse
from proxy.metrics import CountedBlobStore, ProxyMetrics
from proxy.routes import (
    chat,
    code_interpreter,
    containers,
    downloads,
    files,
    health,
    models,
    responses,
)
from proxy.settings import Settings
from proxy.upstream import Upstream
from storage.blobs import open_blob_store
from storage.conversations import purge_conversations
from storage.db import create_engine, session_factory
from storage.executions import forget_old_content
from storage.files import expired_files
from storage.keys import has_active_key
from storage.migrate import prepare

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 300.0
MULTIPART_OVERHEAD = 1024 * 1024
# Each request allocates a few thousand short-lived objects; with the default threshold of
# 700 the collector would run several times per request.
GC_GEN0_THRESHOLD = 50_000


def create_app(
    settings: Settings,
    *,
    executor: Executor | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the API service.

    `executor` is the execution service to use (the all-in-one entrypoint passes an in-process
    one); without it, `settings.executor_url` names remote executors, and with neither the
    code interpreter is unavailable. The app owns the executor: it starts and closes it.
    `/metrics` shows `registry` (the all-in-one entrypoint shares one with its executor).
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ProxyMetrics(registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            settings.database,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        try:
            await prepare(engine, migrate=settings.auto_migrate)
        except BaseException:
            await engine.dispose()
            raise
        metrics.watch_database(engine)
        db = session_factory(engine)
        blobs = CountedBlobStore(
            open_blob_store(settings.blobs, s3_endpoint_url=settings.s3_endpoint_url),
            metrics.blob_errors,
        )
        signing_key = settings.signing_key()
        if settings.secret_key is None and engine.dialect.name != "sqlite":
            logger.warning(
                "no CODEPROXY_SECRET_KEY: this replica signs JWTs and links with a key of its "
                "own (in %s), which other replicas reject; set the same key on every replica",
                settings.data_dir,
            )
        upstream = Upstream(settings, metrics)
        if settings.upstream_api_key is None:
            logger.warning(
                "no CODEPROXY_UPSTREAM_API_KEY (or OPENAI_API_KEY): requests reach %s without "
                "a key",
                settings.upstream_base_url,
            )
        await _explain_missing_keys(settings, db)
        remote = executor
        if remote is None and settings.executor_url:
            if settings.internal_token is None:
                raise RuntimeError(
                    "CODEPROXY_INTERNAL_TOKEN is required with CODEPROXY_EXECUTOR_URL"
                )
            remote = Fleet(
                settings.executor_url,
                settings.internal_token.get_secret_value(),
                db,
                heartbeat_interval=settings.node_heartbeat_interval,
                dead_after=settings.node_dead_after,
            )
        if remote is not None:
            await remote.start()
        app.state.services = Services(
            settings=settings,
            db=db,
            blobs=blobs,
            upstream=upstream,
            auth=Authenticator(
                static_keys=[k.get_secret_value() for k in settings.api_keys],
                signing_key=signing_key,
                sessions=db,
                cache_ttl=settings.key_cache_ttl,
            ),
            executor=remote,
            signing_key=signing_key,
            metrics=metrics,
        )
        sweeper = asyncio.create_task(_housekeeping(app.state.services))
        app.state.runs = RunManager(app.state.services)
        await app.state.runs.start()
        # Everything built so far lives as long as the app: keep it out of the collector's
        # full passes, which would otherwise stall requests by tens of milliseconds.
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 50)
        try:
            yield
        finally:
            await app.state.runs.stop()
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if remote is not None:
                await remote.aclose()
            await upstream.aclose()
            await engine.dispose()

    app = FastAPI(
        title="codeproxy",
        summary="An OpenAI-compatible endpoint with a sandboxed code interpreter.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # FastAPI's built-in OpenTelemetry probing checks the environment on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Multipart uploads check their own, exact limit; this bounds JSON bodies.
        max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD,
    )
    install_handlers(app)
    api = APIRouter()
    for module in (chat, code_interpreter, containers, downloads, files, models, responses):
        api.include_router(module.router)
    api.include_router(assistants.router)
    app.include_router(health.router)
    app.include_router(api, prefix="/v1")
    # Clients whose base URL lacks /v1 reach the same routes.
    app.include_router(api, include_in_schema=False)
    app.add_route("/metrics", lambda _request: render_metrics(registry), include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=metrics, added_latency=True)
    app.add_middleware(RequestIdMiddleware, render=render_unexpected)
    return app


async def _explain_missing_keys(settings: Settings, db: async_sessionmaker[AsyncSession]) -> None:
    """A service nobody can call says so, and how to fix it, at start-up."""
    if settings.api_keys:
        return
    async with db() as session:
        if await has_active_key(session):
            return
    logger.warning(
        "no API key is configured, so every request is refused with 'Incorrect API key "
        "provided'. Either set CODEPROXY_API_KEYS=<a secret of your choice> (comma-separated "
        "for several) and restart, or run `codeproxy keys create NAME`, which prints a key "
        "that works at once."
    )


async def _housekeeping(services: Services) -> None:
    """Every few minutes: delete expired files (rows first), forget old execution content and
    expired conversation records."""
    retention = services.settings.execution_retention_days * 86400
    while True:
        try:
            now = int(time.time())
            async with services.db() as db:
                for row in await expired_files(db, now=now):
                    await db.delete(row)
                    await db.commit()
                    await services.blobs.delete(row.blob_key)
                await forget_old_content(db, before=now - int(retention))
                await purge_conversations(db, now=now)
        except Exception:
            logger.exception("housekeeping failed; retrying later")
        await asyncio.sleep(HOUSEKEEPING_SECONDS)

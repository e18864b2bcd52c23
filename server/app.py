"""The FastAPI application: factory, lifespan (models load once), routers and error handlers."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hypernet.errors import T2LError
from server import errors
from server.api import adapters, chat, health, metrics, models, playground
from server.auth import ApiKeyMiddleware
from server.limits import BodyLimitMiddleware, RateLimitMiddleware
from server.metrics import Metrics, MetricsMiddleware
from server.service import Service
from server.settings import ServerSettings


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    service_metrics = Metrics()  # made with the app: the middleware counts requests before the service runs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Service(settings, service_metrics)
        app.state.service = svc
        app.state.startup_error = None
        try:
            await svc.start()
            yield
        except T2LError as err:  # a user's mistake (bad path, wrong model): reported in one line by the CLI
            app.state.startup_error = str(err)
            raise
        finally:
            await svc.stop()

    app = FastAPI(
        title="T2L server",
        description="Text-to-LoRA: task descriptions become LoRA adapters in one hypernetwork forward pass.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    # outermost last: metrics see every answer, then keys, the rate limit, the body cap
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.rate_limit:
        app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit)
    app.add_middleware(ApiKeyMiddleware, keys=settings.all_api_keys(), metrics_public=settings.metrics_public)
    app.add_middleware(MetricsMiddleware, metrics=service_metrics)
    for router in (
        adapters.router,
        chat.router,
        models.router,
        health.router,
        metrics.router,
        playground.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=playground.STATIC), name="static")
    app.state.auth = bool(settings.all_api_keys())
    return app

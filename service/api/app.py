"""The FastAPI app: routers, problem details, and the dispatcher loop that talks to Ray."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from service.api import dispatch, problems, ui
from service.api.limits import Limits
from service.api.metrics import instrument
from service.api.routes import catalog, health
from service.api.routes import schedules as schedule_routes
from service.api.routes import studies as study_routes
from service.api.schemas import Problem, ScheduleIn
from service.api.studies import Context
from service.definition import StudyDefinition
from service.jobs import Jobs, RayJobs
from service.settings import Settings
from service.store import Store, migrate


def document_definition(components: dict[str, Any]) -> None:
    """What the definition's free-form fields accept, for readers and generated clients: the
    search-space language (validated by search_spaces at submission), and problem details."""
    from pydantic import TypeAdapter

    from search_spaces import CategoricalParam, FloatParam, IntParam

    params = TypeAdapter(dict[str, FloatParam | IntParam | CategoricalParam]).json_schema(ref_template="#/components/schemas/{model}")
    components.update(params.pop("$defs", {}))
    components["SearchSpace"] = {**params, "minProperties": 1, "maxProperties": 64, "title": "SearchSpace", "description": "Parameter name -> declaration, discriminated by `type`.",
                                 "examples": [{"lr": {"type": "float", "low": 1e-4, "high": 1, "log": True},
                                               "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
                                               "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": ["momentum"]}}}]}
    space = {"$ref": "#/components/schemas/SearchSpace"}
    preset = {"type": "string", "description": "A preset's name (GET /v1/search-spaces)."}
    definition = components["StudyDefinition"]
    definition["properties"]["search_space"] = {
        **{k: v for k, v in definition["properties"]["search_space"].items() if k in ("title", "description")},
        "anyOf": [preset, space, {"type": "array", "items": {"anyOf": [preset, space]}, "minItems": 1}],
    }
    definition["properties"]["fixed"] = {**definition["properties"]["fixed"], "type": "object",
                                         "additionalProperties": {"description": "a knob's value"}, "examples": [{"epochs": 30, "batch_size": 64}]}
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")


def create_app(settings: Settings, *, jobs: Jobs | None = None, run_migrations: bool = True) -> FastAPI:
    """The API over ``settings``; ``jobs`` defaults to the Ray cluster at ``settings.ray_address``
    (tests pass a fake)."""
    if run_migrations:
        migrate(settings.database_url)
    ctx = Context(settings=settings, store=Store(settings.database_url), jobs=jobs if jobs is not None else RayJobs(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder = dispatch.holder_name()  # one API process of several runs the dispatcher (service.api.dispatch)
        task = asyncio.create_task(dispatch.run(ctx, holder))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await dispatch.stop(ctx, holder)

    app = FastAPIOffline(  # FastAPI, with /docs and /redoc assets served from the package
        title="Caviar",
        version="0.1.0",
        description="Caviar-mode hyperparameter tuning: submit a study, Ray Tune trains many configurations in "
        "parallel (Optuna samplers, ASHA early stopping), read the best back.",
        lifespan=lifespan,
    )
    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus StudyDefinition (the submit route reads its body by hand, for YAML)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            definition = StudyDefinition.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definition.pop("$defs", {}))
            components["StudyDefinition"] = definition
            components["ScheduleIn"] = ScheduleIn.model_json_schema(ref_template="#/components/schemas/{model}")
            document_definition(components)
            if settings.auth == "optional":  # on loopback a token is optional: say so (an empty requirement)
                for operations in schema.get("paths", {}).values():
                    for operation in operations.values():
                        if isinstance(operation, dict) and operation.get("security"):
                            operation["security"] = [{}, *operation["security"]]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.ctx = ctx
    app.state.draining = False  # set on SIGTERM (service.api.server): /readyz turns 503 before the server stops
    app.state.metrics = instrument(app, ctx.store)  # Prometheus: GET /metrics (service.api.metrics)

    async def docs_token_ok(authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and bool(token) and await run_in_threadpool(ctx.store.tokens.owner_for, token.strip()) is not None

    app.add_middleware(Limits, guard_docs=docs_token_ok if settings.auth == "required" else None)
    # JSON over 1 KB compressed for clients that accept gzip (the UI's plots: 200 KB -> ~50 KB); the
    # event stream and the checkpoint archives are left as they are (Starlette's excluded types)
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    problems.install(app)
    app.include_router(study_routes.router)
    app.include_router(schedule_routes.router)
    app.include_router(catalog.router)
    app.include_router(health.router)
    ui.install(app)  # the web UI at / (service/api/ui)
    return app

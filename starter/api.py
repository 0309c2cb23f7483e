"""The HTTP API: NanoCMD-compatible endpoints, our run look-ups, and the webhook relay.

Authentication is HTTP Basic: a user of ``mdmflow user add`` (``NAME:KEY``), or user
``nanocmd`` with password ``MDMFLOW_API_KEY`` (as NanoCMD). What a caller may do follows
from their role (:mod:`mdmflow.roles`); every change and every secret read is audited
(:mod:`starter.audit_trail`), and every start passes the policy, the emergency stop and
the rate limits (:mod:`mdmflow.admission`). ``/webhook`` is authenticated by HMAC
instead, ``/version`` and ``/metrics`` are open. OpenAPI is served at ``/docs`` and
``/openapi.json``; the docs page loads Swagger UI from ``/static/swagger/`` (shipped in
``starter/static``), so it works offline.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from pydantic_core import to_json
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from mdmflow import __version__, admission, metrics
from mdmflow.body import BodyLimit
from mdmflow.temporal_calls import controls, runs, visibility
from mdmflow.temporal_calls.starts import StartError, start_workflow
from relay.app import webhook_router
from relay.events import EventDispatcher
from relay.inbox import DurableRouter, Forwarder, inbox_gauges, render_gauges
from relay.routing import Router
from relay.webhook_auth import WebhookAuth
from starter.api_cmdplans import router as cmdplans_router
from starter.api_escrow import router as escrow_router
from starter.api_events import router as events_router
from starter.api_governance import router as governance_router
from starter.api_profiles import router as profiles_router
from starter.api_schedules import router as schedules_router
from starter.audit_trail import AuditTrail, note
from starter.codec_server import codec_app
from starter.deps import AUTH, ERRORS, CallerDep, Services, describe_errors, one_of, require
from starter.request_guard import RequestGuard
from workflows.models import MAX_RETRIES, ControlAction, OnFailure
from workflows.registry import BY_NAME

log = logging.getLogger("mdmflow.api")

SWAGGER_DIR = FilePath(__file__).parent / "static" / "swagger"
SWAGGER_URL = "/static/swagger"


# One start's devices: a whole fleet, within what a request and Temporal handle in one go.
MAX_START_IDS = 50_000


class StartBody(BaseModel):
    """IDs in a JSON body: a fleet-sized list does not fit in a URL."""

    ids: list[str] = Field(
        default_factory=list,
        max_length=MAX_START_IDS,
        description=f"Enrollment IDs (at most {MAX_START_IDS:,} per start)",
    )
    context: str | None = Field(default=None, description="Workflow-dependent context")
    on_failure: OnFailure | None = Field(
        default=None,
        description="fail (default): a failed step ends the run; suspend: it waits for "
        "retry, skip or abort",
    )
    rollback: bool | None = Field(
        default=None, description="undo what the run did when it fails or is cancelled"
    )
    retries: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RETRIES,
        description="automatic retries of a failed step before it fails or suspends",
    )
    retry_backoff_seconds: float | None = Field(
        default=None, gt=0, le=86400, description="first pause before a retry (doubles)"
    )


class ControlBody(BaseModel):
    reason: str = Field(default="", max_length=500, description="Why (recorded in the run)")


class StartResponse(BaseModel):
    instance_id: str
    started: list[str]
    refused: dict[str, str]


def create_app(
    services: Services | Callable[[], Awaitable[Services]],
    api_key: str,
    webhook_auth: WebhookAuth | None = None,
    nanocmd_role: str | None = "operator",
) -> FastAPI:
    """Build the app; ``services`` may be a factory awaited at start-up.

    ``nanocmd_role``: the role of NanoCMD's user ``nanocmd`` (None: that user is off).
    """
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services if isinstance(services, Services) else await services()
        app.state.services = svc
        events = EventDispatcher(
            svc.client,
            svc.task_queue,
            svc.subscriptions,
            svc.register,
            svc.holds,
            admission.system_gate(svc.policy, svc.stops),
        )
        router = Router(svc.client, svc.task_queue, events)
        durable = DurableRouter(router, svc.inbox)
        holder["router"] = durable
        forwarder = Forwarder(durable)
        forwarder.start()  # delivers what an earlier run of the relay held back
        try:
            yield
        finally:
            await forwarder.stop()

    app = FastAPI(
        title="mdmflow",
        version=__version__,
        description="Durable Apple MDM workflows on Temporal (NanoCMD-compatible API).",
        lifespan=lifespan,
        docs_url=None,  # served below from local files instead of a CDN
    )
    app.state.api_key = api_key
    app.state.nanocmd_role = nanocmd_role
    app.add_middleware(BodyLimit)  # every body capped by route before it is read
    app.add_middleware(RequestGuard)  # clean URLs; who is calling, before any body
    # outermost: a refusal by any layer below (401, 403, 413) is audited too
    app.add_middleware(AuditTrail, audit=lambda: _audit_log(app))
    _add_docs(app)

    def svc() -> Services:
        s: Services = app.state.services
        return s

    # Starlette's own 404/405 (no such route or method) too: one error shape everywhere
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def internal_error(_r: Request, exc: Exception) -> JSONResponse:
        # the traceback is logged by the server; the caller gets the one error shape
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe_errors(exc.errors())}, status_code=400)

    @app.exception_handler(RPCError)
    async def temporal_error(_r: Request, exc: RPCError) -> JSONResponse:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:  # the request, not Temporal, is wrong
            log.info("Temporal refused a request: %s", exc.message)
            return JSONResponse(
                {"error": f"Temporal refused the request: {exc.message}"}, status_code=400
            )
        log.error("Temporal error: %s", exc)
        return JSONResponse({"error": f"Temporal: {exc.message}"}, status_code=503)

    app.include_router(webhook_router(lambda: holder["router"], webhook_auth or WebhookAuth()))

    auth = AUTH
    err = ERRORS
    app.include_router(events_router)
    app.include_router(escrow_router)
    app.include_router(schedules_router)
    app.include_router(profiles_router)
    app.include_router(cmdplans_router)
    app.include_router(governance_router)
    app.mount("/codec", codec_app(lambda: svc().client.data_converter.payload_codec, api_key))

    @app.get("/version", tags=["meta"])
    async def version() -> dict[str, str]:
        return {"version": f"v{__version__}"}

    @app.get("/metrics", tags=["meta"], response_class=PlainTextResponse)
    async def metrics_text() -> str:
        try:
            gauges = await inbox_gauges(svc().inbox)
        except SQLAlchemyError:
            gauges = {}
        try:  # Temporal away or no GROUP BY in its visibility: the gauge is left out
            runs = metrics.render_gauge(
                "runs",
                "Fleet runs (chunks) by Temporal execution status, counted at most every "
                f"{metrics.RUNS_CACHE_SECONDS:g} s.",
                "status",
                await metrics.runs_by_status(svc().client),
            )
        except (RPCError, RuntimeError) as exc:
            log.info("runs by status not counted: %s", exc)
            runs = ""
        return metrics.render() + render_gauges(gauges) + runs

    @app.post(
        "/v1/workflow/{name}/start",
        tags=["workflows"],
        dependencies=auth,
        response_model=StartResponse,
        responses=err,
        summary="Start a workflow for one or more enrollments",
    )
    async def start(
        request: Request,
        who: CallerDep,
        name: Annotated[str, Path(json_schema_extra=one_of(sorted(BY_NAME)))],
        id: Annotated[list[str], Query(description="Enrollment ID (repeat for many)")] = [],  # noqa: B006
        context: Annotated[str | None, Query(description="Workflow-dependent context")] = None,
        on_failure: Annotated[
            OnFailure | None, Query(description="suspend: a failed step waits for an operator")
        ] = None,
        rollback: Annotated[
            bool | None, Query(description="undo what the run did if it fails or is cancelled")
        ] = None,
        retries: Annotated[
            int | None,
            Query(ge=0, le=MAX_RETRIES, description="automatic retries of a failed step"),
        ] = None,
        retry_backoff_seconds: Annotated[
            float | None, Query(gt=0, le=86400, description="first pause before a retry")
        ] = None,
        body: Annotated[
            StartBody | None, Body(description="Optional: more IDs (and context) as JSON")
        ] = None,
    ) -> StartResponse:
        """IDs come from ``?id=`` (NanoCMD's form), a JSON body ``{"ids": [...]}``, or both.

        Refused as a whole: 400 (bad IDs or context, naming the field), 403 (policy: no
        entry, disabled, role, more than ``max_targets``), 409 (emergency stop), 429
        (rate limit, with ``Retry-After``). Devices refused one by one (already running,
        unknown enrollment) are listed in ``refused``.
        """
        if body is not None:
            id = [*id, *body.ids]
            context = context if context is not None else body.context
            on_failure = on_failure or body.on_failure
            rollback = rollback if rollback is not None else body.rollback
            retries = retries if retries is not None else body.retries
            retry_backoff_seconds = retry_backoff_seconds or body.retry_backoff_seconds
        note(request, "start", id, _start_params(name, context, on_failure, rollback, retries))
        try:
            admitted = await admission.admit(svc(), who.role, name, id, context)
            await admission.take_tokens(svc(), admitted)
        except admission.Refused as exc:
            raise _refused(exc) from exc
        if not admitted.candidates:
            return StartResponse(instance_id="", started=[], refused=admitted.refused)
        try:
            result = await start_workflow(
                svc().client,
                svc().task_queue,
                name,
                admitted.candidates,
                context,
                holds=svc().holds,
                on_failure=on_failure,
                rollback=bool(rollback),
                retries=retries or 0,
                retry_backoff_seconds=retry_backoff_seconds or 60.0,
                started_by=who.user,
                started_role=who.role,
            )
        except StartError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        await admission.give_back(svc(), admitted, len(admitted.candidates) - len(result.started))
        result.refused.update(admitted.refused)
        return StartResponse(
            instance_id=result.instance_id, started=result.started, refused=result.refused
        )

    @app.post(
        "/v1/workflow/{name}/plan",
        tags=["workflows"],
        dependencies=[Depends(require("read"))],
        responses=err,
        summary="Dry run: what a start with these parameters would do (nothing starts)",
    )
    async def plan(
        request: Request,
        who: CallerDep,
        name: Annotated[str, Path(json_schema_extra=one_of(sorted(BY_NAME)))],
        id: Annotated[list[str], Query(description="Enrollment ID (repeat for many)")] = [],  # noqa: B006
        context: Annotated[str | None, Query(description="Workflow-dependent context")] = None,
        on_failure: Annotated[OnFailure | None, Query()] = None,
        rollback: Annotated[bool | None, Query()] = None,
        retries: Annotated[int | None, Query(ge=0, le=MAX_RETRIES)] = None,
        retry_backoff_seconds: Annotated[float | None, Query(gt=0, le=86400)] = None,
        body: Annotated[StartBody | None, Body()] = None,
    ) -> dict[str, Any]:
        """Which devices would start and which would be refused and why (policy,
        exclusivity, unknown enrollment, rate limit, emergency stop), the commands each
        step would send (RequestTypes and profile names, never secrets), and whether a
        second person must approve. Takes the parameters of a start; nothing is started,
        held or counted against a rate limit. Judged for the caller's own role."""
        if body is not None:
            id = [*id, *body.ids]
            context = context if context is not None else body.context
        note(request, "plan", id, _start_params(name, context, on_failure, rollback, retries))
        try:
            return await admission.plan(svc(), who.role, name, id, context)
        except admission.Refused as exc:
            raise _refused(exc) from exc

    @app.get("/v1/workflows", tags=["workflows"], dependencies=auth)
    async def workflows() -> list[dict[str, Any]]:
        return [{"name": w.NAME, "exclusive": w.EXCLUSIVE} for w in BY_NAME.values()]

    async def inventory(
        id: Annotated[list[str], Query(description="Enrollment ID (repeat for many)")] = [],  # noqa: B006
    ) -> dict[str, dict[str, Any]]:
        if not id:
            raise HTTPException(status_code=400, detail="no IDs provided (use ?id=...)")
        return await svc().store.retrieve(id)

    app.get("/v1/inventory", tags=["inventory"], dependencies=auth, responses=err)(inventory)
    app.get("/inventory", tags=["inventory"], dependencies=auth, include_in_schema=False)(inventory)

    @app.get("/v1/devinfolog", tags=["inventory"], dependencies=auth, responses=err)
    async def devinfolog(id: str, limit: int = 50) -> list[dict[str, Any]]:
        return await svc().store.device_information_log(id, min(max(limit, 1), 1000))

    @app.get("/v1/runs", tags=["runs"], dependencies=auth, responses=err)
    async def list_runs(
        response: Response,
        instance_id: str | None = None,
        id: Annotated[str | None, Query(description="Enrollment ID")] = None,
        workflow: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
        page_token: Annotated[
            str | None, Query(description="X-Next-Page-Token of the previous page")
        ] = None,
    ) -> list[dict[str, Any]]:
        """One item per device run (a fleet run lists each of its devices) with the
        device's status (running, paused, suspended, completed, failed, cancelled,
        timed_out), message and current step, newest runs first; the next page's token
        comes in the ``X-Next-Page-Token`` header."""
        query = visibility.build_query(instance_id, id, workflow)
        if not query:
            raise HTTPException(status_code=400, detail="give instance_id, id or workflow")
        try:
            found, next_token = await runs.list_device_runs(
                svc().client, svc().holds, query, limit=limit, page_token=page_token
            )
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if next_token:
            response.headers["X-Next-Page-Token"] = next_token
        if id and not page_token:  # running fleet runs that drive this device
            known = {r["workflow_id"] for r in found}
            found += await runs.held_runs(
                svc().client, svc().holds, id, instance_id, workflow, known
            )
        return found

    @app.post("/v1/runs/{action}", tags=["runs"], dependencies=auth, responses=err)
    async def control_runs(
        request: Request,
        who: CallerDep,
        action: Annotated[ControlAction, Path(description="what to do")],
        workflow_id: Annotated[str | None, Query(description="one run")] = None,
        instance_id: Annotated[str | None, Query(description="every run of a start")] = None,
        workflow: Annotated[str | None, Query(description="every run of a workflow")] = None,
        id: Annotated[list[str], Query(description="only these enrollments (repeatable)")] = [],  # noqa: B006
        body: Annotated[ControlBody | None, Body()] = None,
    ) -> JSONResponse:
        """Cancel, pause, resume, retry, skip or abort runs, or devices inside them.

        Answers per run which devices the action applied to and why not the others:
        200 when it applied to any, 409 when to none, 404 when no run matched.
        """
        actor = who.user
        note(
            request,
            f"runs.{action}",
            id,
            {"workflow_id": workflow_id, "instance_id": instance_id, "workflow": workflow},
        )
        try:
            chosen = await controls.select_runs(
                svc().client,
                svc().holds,
                workflow_id=workflow_id,
                instance_id=instance_id,
                workflow=workflow,
                ids=id,
            )
        except controls.ControlError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if not chosen:
            raise HTTPException(status_code=404, detail="no running run matches")
        reason = body.reason if body is not None else ""
        results = await controls.apply(svc().client, chosen, action, reason, actor)
        status = 200 if any(r.accepted for r in results) else 409
        return JSONResponse({"runs": [r.as_dict() for r in results]}, status_code=status)

    async def _answer(workflow_id: str, query: Awaitable[BaseModel]) -> dict[str, Any]:
        """A run's answer to a query, as JSON exactly as the run gave it."""
        try:
            answer = await query
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise HTTPException(status_code=404, detail=f"no run {workflow_id!r}") from exc
            raise
        except WorkflowQueryFailedError as exc:
            # not a fleet run, an enrollment it does not drive, or it failed to answer
            raise HTTPException(status_code=400, detail=f"{workflow_id!r}: {exc}") from exc
        # encoded as Temporal's payload converter encodes it: the JSON the run answered
        doc: dict[str, Any] = json.loads(to_json(answer))
        return doc

    @app.get("/v1/runs/devices", tags=["runs"], dependencies=auth, responses=err)
    async def run_devices(
        workflow_id: Annotated[str, Query(min_length=1, description="a fleet run's ID")],
        after: Annotated[str | None, Query(description="page after this enrollment")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """A fleet run's devices, a page at a time (``next_after`` for the next page)."""
        return await _answer(
            workflow_id, runs.device_states(svc().client, workflow_id, after, limit)
        )

    @app.get("/v1/runs/summary", tags=["runs"], dependencies=auth, responses=err)
    async def run_summary(
        workflow_id: Annotated[str, Query(min_length=1, description="a fleet run's ID")],
    ) -> dict[str, Any]:
        """A fleet run's devices per status and per current step."""
        return await _answer(workflow_id, runs.run_summary(svc().client, workflow_id))

    @app.get("/v1/runs/state", tags=["runs"], dependencies=auth, responses=err)
    async def run_state(
        workflow_id: Annotated[str, Query(min_length=1, description="e.g. <workflow>/<id>")],
        id: Annotated[
            str | None, Query(description="Enrollment ID: one device of a fleet run")
        ] = None,
        run_id: Annotated[
            str | None, Query(description="an earlier run of this workflow ID (default: latest)")
        ] = None,
    ) -> dict[str, Any]:
        """State of one run (or of one device of a fleet run), running or closed: status,
        message, steps, pending commands, NotNow counts."""
        return await _answer(
            workflow_id, runs.run_state(svc().client, workflow_id, id, run_id=run_id)
        )

    return app


def _audit_log(app: FastAPI) -> Any:
    """The audit log once the services are up (None before: nothing to audit yet)."""
    svc: Services | None = getattr(app.state, "services", None)
    return svc.audit if svc is not None else None


def _refused(exc: admission.Refused) -> HTTPException:
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return HTTPException(status_code=exc.status, detail=exc.message, headers=headers)


def _start_params(
    name: str,
    context: str | None,
    on_failure: str | None,
    rollback: bool | None,
    retries: int | None,
) -> dict[str, Any]:
    """A start's parameters for the audit log; a JSON context is kept with its secrets
    redacted (by key), a plain one only by length (it may be a SCEP challenge)."""
    shown: Any = None
    if context:
        try:
            shown = json.loads(context)
        except ValueError:
            shown = f"[{len(context)} characters]"
        if not isinstance(shown, dict):
            shown = f"[{len(context)} characters]"
    return {
        "workflow": name,
        "context": shown,
        "on_failure": on_failure,
        "rollback": rollback,
        "retries": retries,
    }


def _add_docs(app: FastAPI) -> None:
    """``/docs`` with Swagger UI's script, style and icon from ``/static/swagger``.

    FastAPI's default page loads them from a CDN and stays blank without Internet. An
    install without the files (a package built without its data) falls back to the CDN
    rather than failing to start.
    """
    local = (SWAGGER_DIR / "swagger-ui-bundle.js").is_file()
    if local:
        app.mount(SWAGGER_URL, StaticFiles(directory=SWAGGER_DIR), name="swagger")
    else:
        log.warning("Swagger UI files missing from %s: /docs loads them from a CDN", SWAGGER_DIR)
    redirect_url = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        assets: dict[str, Any] = {}
        if local:
            url = f"{root}{SWAGGER_URL}"
            assets = {
                "swagger_js_url": f"{url}/swagger-ui-bundle.js",
                "swagger_css_url": f"{url}/swagger-ui.css",
                "swagger_favicon_url": f"{url}/favicon-32x32.png",
            }
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}" if redirect_url else None,
            # no spec validation badge fetched from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
            **assets,
        )

    if redirect_url:

        @app.get(redirect_url, include_in_schema=False)
        async def docs_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

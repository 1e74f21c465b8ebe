"""The status app: the routes of CONTRACT §5 and the status pages over one daemon's parts.

``StatusApp`` holds the route table and what the families of routes share (the daemon, the
answers shared a moment, the jobs as shown, a run or a 404); each family is a class of its own
module over it: ``jobs``, ``control`` (the operator's), ``runs`` (and their logs), ``figures``
(metrics, nodes, pools), and the pages (``site``).

Every store call runs in a worker thread, and so does building and encoding the large answers;
the trio thread only reads the scheduler's state.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, quote

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pipeline.errors import PipelineError
from pipeline.http.answers import (
    ApiError,
    JSONResponse,
    RecentAnswers,
    api_error,
    http_error,
    internal_error,
    pipeline_error,
)
from pipeline.http.control import ControlRoutes
from pipeline.http.figures import FigureRoutes
from pipeline.http.guard import SESSION_COOKIE, Guard, session_value
from pipeline.http.jobs import JobRoutes
from pipeline.http.openapi import openapi_document
from pipeline.http.reading import body_bytes, local_target, match
from pipeline.http.runs import RunRoutes
from pipeline.http.site import Site
from pipeline.model import JOB_NAME, RUN_ID, Job
from pipeline.policy import circuit_open
from pipeline.runrecords import RunRecord
from pipeline.store.records import JobState
from pipeline.views import CatalogFiles, job_views, run_as_dict

if TYPE_CHECKING:
    from pipeline.daemon import Daemon

T = TypeVar("T")


# -- the app -----------------------------------------------------------------------------------

class StatusApp:
    """The routes, over one daemon's parts."""

    def __init__(self, daemon: Daemon, *, token: str | None = None,
                 read_only: bool = False) -> None:
        self.daemon = daemon
        self.token = token
        self.read_only = read_only  # the pages show no control (the Guard refuses changes)
        self.recent = RecentAnswers(self.version)
        self.site = Site(self)
        self.jobs = JobRoutes(self)
        self.control = ControlRoutes(self)
        self.runs = RunRoutes(self)
        self.figures = FigureRoutes(self)
        self._offered = frozenset((method, route.path) for route in self.routes()
                                  for method in route.methods or ())

    def offered(self, method: str, path: str) -> bool:
        """Whether the app has a route for ``method`` on ``path`` (as routes spell it:
        ``/api/v1/jobs/{name}/pause``); the pages show a control only then."""
        return (method, path) in self._offered

    def version(self) -> Hashable:
        """Changes whenever what the lists show may have changed (trio thread only)."""
        catalog = self.daemon.catalog
        return (self.daemon.metrics.events, id(catalog.jobs), id(catalog.problems),
                id(catalog.stale), len(self.daemon.scheduler.jobs), self.daemon.circuits)

    @property
    def state_dir(self) -> Path:
        return self.daemon.state_dir

    def now(self) -> datetime:
        return self.daemon.lease.clock()

    async def store(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method in a worker thread: it may block on disk."""
        return await trio.to_thread.run_sync(partial(call, *args, **kwargs))

    def routes(self) -> list[Route]:
        jobs, control, runs, figures = self.jobs, self.control, self.runs, self.figures
        return [
            Route("/healthz", self.health, methods=["GET"]),
            Route("/metrics", figures.metrics, methods=["GET"]),
            *self.site.routes(),
            Route("/login", self.login, methods=["GET", "POST"], include_in_schema=False),
            Route("/api/v1/jobs", jobs.list_jobs, methods=["GET"]),
            Route("/api/v1/jobs/{name}", jobs.get_job, methods=["GET"]),
            Route("/api/v1/jobs/{name}/runs", jobs.trigger, methods=["POST"]),
            Route("/api/v1/jobs/{name}/circuit/reset", jobs.reset_circuit, methods=["POST"]),
            Route("/api/v1/jobs/{name}/pause", control.pause, methods=["POST"]),
            Route("/api/v1/jobs/{name}/resume", control.resume, methods=["POST"]),
            Route("/api/v1/jobs/{name}/decisions", control.decisions, methods=["GET"]),
            Route("/api/v1/jobs/{name}/backfill", control.backfill, methods=["POST"]),
            Route("/api/v1/runs/{run_id}/rerun", control.rerun, methods=["POST"]),
            Route("/api/v1/pause", control.pause_all, methods=["POST"]),
            Route("/api/v1/resume", control.resume_all, methods=["POST"]),
            Route("/api/v1/runs", runs.list_runs, methods=["GET"]),
            Route("/api/v1/runs/{run_id}", runs.get_run, methods=["GET"]),
            Route("/api/v1/runs/{run_id}", runs.delete_run, methods=["DELETE"]),
            Route("/api/v1/runs/{run_id}/stop", runs.stop, methods=["POST"]),
            Route("/api/v1/runs/{run_id}/steps/{step}/log", runs.step_log, methods=["GET"]),
            Route("/api/v1/metrics", figures.metrics_json, methods=["GET"]),
            Route("/api/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/v1/nodes", figures.list_nodes, methods=["GET"]),
            Route("/api/v1/pools", figures.list_pools, methods=["GET"]),
            Route("/api/v1/graph", jobs.job_graph, methods=["GET"]),
        ]

    # -- what the routes share ----------------------------------------------------------------

    async def shown_jobs(self) -> list[dict[str, Any]]:
        """Every job as the API and the pages show it (shared a moment: ``recent``)."""
        async def build() -> list[dict[str, Any]]:
            # What lives in the scheduler is read here, in the trio thread; the rest (a
            # thousand dictionaries) is built in a worker thread.
            catalog, now = self.daemon.catalog, self.now()
            files = CatalogFiles(catalog.jobs, catalog.problems, catalog.files, catalog.stale)
            last, active, states = await self.store(self.last_and_active)
            scheduler = self.daemon.scheduler
            live = {name: (scheduler.next_fire(name),
                           circuit_open(job.circuit_breaker, states[name].failures,
                                        states[name].circuit_opened_at, now)
                           if name in states else False)
                    for name, job in catalog.jobs.items()}
            paused = {n: (st.paused_at, st.paused_by, st.paused_reason)
                      for n, st in states.items() if st.paused_at is not None}
            return await trio.to_thread.run_sync(partial(
                job_views, files, live, last, active, paused, now=now))

        return await self.recent.get("jobs", build)

    def last_and_active(self) -> tuple[dict[str, RunRecord], list[RunRecord],
                                       dict[str, JobState]]:
        store = self.daemon.store
        return store.last_runs(), store.active_runs(), store.job_states()

    def loaded_job(self, request: Request) -> Job:
        """The loaded job the request's path names, or a 404."""
        name = match(request.path_params["name"], JOB_NAME, "job")
        job = self.daemon.catalog.jobs.get(name)
        if job is None:
            raise ApiError(404, "not_found", f"no job {name!r} is loaded")
        return job

    async def read_run(self, run_id: str) -> RunRecord:
        """The run ``run_id`` (its id checked first), or a 404."""
        record = await self.store(self.daemon.store.run, match(run_id, RUN_ID, "run"))
        if record is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        return record

    def run_view(self, record: RunRecord) -> dict[str, Any]:
        view = run_as_dict(record)
        for step in view["steps"]:
            step["log_url"] = (f"/api/v1/runs/{record.id}/steps/{quote(step['id'])}/log"
                               if step.get("log") else None)
        return view

    # -- the rest ----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    # -- pages (the rest are the Site's) ------------------------------------------------------

    async def _html(self, template: str, context: Mapping[str, Any],
                    status: int = 200) -> Response:
        return await self.site.html(template, context, status)

    async def login(self, request: Request) -> Response:
        """The status page's sign-in: the token once, then a session cookie."""
        if self.token is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return await self._html("login.html", {"next": local_target(
                request.query_params.get("next")), "failed": False})
        form = parse_qs((await body_bytes(request)).decode(errors="replace"))
        target = local_target((form.get("next") or ["/"])[0])
        given = (form.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await self._html("login.html", {"next": target, "failed": True}, 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, session_value(self.token), httponly=True,
                            samesite="strict", path="/")
        return response


def create_app(daemon: Daemon, *, token: str | None = None, read_only: bool = False,
               status: StatusApp | None = None) -> ASGIApp:
    """The whole HTTP app over ``daemon``: routes behind the ``Guard``. ``read_only``: the
    pages show no control and every POST and DELETE is refused (403). ``status``: the routes,
    when not ``StatusApp(daemon, ...)``'s."""
    status = status or StatusApp(daemon, token=token, read_only=read_only)
    app = Starlette(routes=status.routes(), exception_handlers={
        ApiError: api_error, HTTPException: http_error, PipelineError: pipeline_error,
        Exception: internal_error})
    return Guard(app, token=token, read_only=status.read_only)



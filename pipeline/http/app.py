"""The routes of CONTRACT §5 over one daemon's parts, and the status pages.

Every store call runs in a worker thread, and so does building and encoding the large answers;
the trio thread only reads the scheduler's state.
"""

from __future__ import annotations

import dataclasses
import hmac
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, quote

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from pipeline import jobgraph, operate, spec
from pipeline.errors import (
    PipelineError,
    RunActive,
)
from pipeline.http.answers import (
    ApiError,
    Encoded,
    JSONResponse,
    RecentAnswers,
    api_error,
    dumps,
    encode_shared,
    http_error,
    internal_error,
    pipeline_error,
    shared_answer,
)
from pipeline.http.guard import (
    MAX_LIMIT,
    MAX_WAIT,
    SESSION_COOKIE,
    Guard,
    session_value,
)
from pipeline.http.openapi import openapi_document
from pipeline.http.reading import (
    body_bytes,
    flag,
    integer,
    local_target,
    match,
    number,
    one_of,
    read_json,
    time_param,
)
from pipeline.http.site import Site
from pipeline.http.views import declares, log_size, read_log
from pipeline.logship import shipped_whole
from pipeline.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pipeline.metrics import Snapshot
from pipeline.model import (
    JOB_NAME,
    RUN_ID,
    STEP_INSTANCE_ID,
    Job,
    RunRecord,
    RunStatus,
    Trigger,
    Version,
    iso,
    run_as_dict,
)
from pipeline.nodes import node_views
from pipeline.policy import circuit_open
from pipeline.statedir import log_relpath
from pipeline.store import JobState
from pipeline.views import CatalogFiles, job_views

if TYPE_CHECKING:
    from pipeline.daemon import Daemon


LOG_CHUNK = 64 * 1024
FOLLOW_POLL = 0.25  # seconds between looks at a followed log that has nothing new
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
        return [
            Route("/healthz", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            *self.site.routes(),
            Route("/login", self.login, methods=["GET", "POST"], include_in_schema=False),
            Route("/api/v1/jobs", self.list_jobs, methods=["GET"]),
            Route("/api/v1/jobs/{name}", self.get_job, methods=["GET"]),
            Route("/api/v1/jobs/{name}/runs", self.trigger, methods=["POST"]),
            Route("/api/v1/jobs/{name}/circuit/reset", self.reset_circuit, methods=["POST"]),
            Route("/api/v1/jobs/{name}/pause", self.pause, methods=["POST"]),
            Route("/api/v1/jobs/{name}/resume", self.resume, methods=["POST"]),
            Route("/api/v1/jobs/{name}/decisions", self.decisions, methods=["GET"]),
            Route("/api/v1/jobs/{name}/backfill", self.backfill, methods=["POST"]),
            Route("/api/v1/runs/{run_id}/rerun", self.rerun, methods=["POST"]),
            Route("/api/v1/pause", self.pause_all, methods=["POST"]),
            Route("/api/v1/resume", self.resume_all, methods=["POST"]),
            Route("/api/v1/runs", self.list_runs, methods=["GET"]),
            Route("/api/v1/runs/{run_id}", self.get_run, methods=["GET"]),
            Route("/api/v1/runs/{run_id}", self.delete_run, methods=["DELETE"]),
            Route("/api/v1/runs/{run_id}/stop", self.stop, methods=["POST"]),
            Route("/api/v1/runs/{run_id}/steps/{step}/log", self.step_log, methods=["GET"]),
            Route("/api/v1/metrics", self.metrics_json, methods=["GET"]),
            Route("/api/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/v1/nodes", self.list_nodes, methods=["GET"]),
            Route("/api/v1/pools", self.list_pools, methods=["GET"]),
            Route("/api/v1/graph", self.job_graph, methods=["GET"]),
        ]

    # -- jobs --------------------------------------------------------------------------------

    async def _job_views(self) -> list[dict[str, Any]]:
        async def build() -> list[dict[str, Any]]:
            # What lives in the scheduler is read here, in the trio thread; the rest (a
            # thousand dictionaries) is built in a worker thread.
            catalog, now = self.daemon.catalog, self.now()
            files = CatalogFiles(catalog.jobs, catalog.problems, catalog.files, catalog.stale)
            last, active, states = await self.store(self._last_and_active)
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

    def _last_and_active(self) -> tuple[dict[str, RunRecord], list[RunRecord],
                                        dict[str, JobState]]:
        store = self.daemon.store
        return store.last_runs(), store.active_runs(), store.job_states()

    async def list_jobs(self, request: Request) -> Response:
        async def build() -> Encoded:
            views = await self._job_views()
            return await trio.to_thread.run_sync(encode_shared, {"jobs": views})

        return shared_answer(request, await self.recent.get("jobs.json", build))

    def _loaded_job(self, request: Request) -> Job:
        name = match(request.path_params["name"], JOB_NAME, "job")
        job = self.daemon.catalog.jobs.get(name)
        if job is None:
            raise ApiError(404, "not_found", f"no job {name!r} is loaded")
        return job

    async def get_job(self, request: Request) -> Response:
        name = match(request.path_params["name"], JOB_NAME, "job")
        for view in await self._job_views():
            if view["name"] == name:
                return JSONResponse(view)
        raise ApiError(404, "not_found", f"no job {name!r}")

    async def trigger(self, request: Request) -> Response:
        job = self._loaded_job(request)
        body = await read_json(request)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ApiError(400, "bad_body", 'the body must be a JSON object: {"params": {...}}')
        unknown = sorted(set(body) - {"params"})
        if unknown:
            raise ApiError(400, "bad_body", f"unknown field(s) {', '.join(unknown)}; the body "
                                            'is {"params": {...}}')
        given = body.get("params") or {}
        if not isinstance(given, dict):
            raise ApiError(400, "bad_body", '"params" must be an object of name: value')
        values = spec.parse_params(job, given)  # JSON values, typed by the job's declaration
        dispatched, _ = await self.daemon.worker.trigger(job, values, trigger=Trigger.API)
        self.recent.clear()  # a client reads its own writes
        if dispatched.status is RunStatus.SKIPPED:
            raise ApiError(409, "refused", f"job {job.name} was not started: "
                                           f"{dispatched.reason}", {
                "run_id": dispatched.run_id, "status": str(dispatched.status),
                "reason": dispatched.reason})
        url = f"/api/v1/runs/{dispatched.run_id}"
        return JSONResponse({"run_id": dispatched.run_id, "job": job.name,
                             "status": str(dispatched.status), "url": url},
                            status_code=202, headers={"Location": url})

    async def reset_circuit(self, request: Request) -> Response:
        job = self._loaded_job(request)
        await self.store(self.daemon.store.reset_circuit, job.name, self.now())
        self.daemon.circuits += 1
        self.recent.clear()
        return JSONResponse({"job": job.name, "circuit": "closed"})

    async def _body(self, request: Request, allowed: Mapping[str, type]) -> dict[str, Any]:
        """A JSON object body of the ``allowed`` fields (by type); {} when empty."""
        body = await read_json(request)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "bad_body", "the body must be a JSON object")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise ApiError(400, "bad_body", f"unknown field(s) {', '.join(unknown)}; known: "
                                            f"{', '.join(allowed)}")
        for key, kind in allowed.items():
            if key in body and body[key] is not None and not isinstance(body[key], kind):
                raise ApiError(400, "bad_body", f'"{key}" must be a {kind.__name__}')
        return body

    def _who(self, request: Request) -> str:
        client = request.client.host if request.client else "?"
        return f"api ({client})"

    async def _paused(self, request: Request, names: list[str], *, pause: bool) -> None:
        if pause:
            body = await self._body(request, {"reason": str})
            reason = body.get("reason")
            if reason is not None and len(reason) > 1000:
                raise ApiError(400, "bad_body", '"reason" is at most 1000 characters')
            await self.store(operate.pause, self.daemon.store, names, by=self._who(request),
                             reason=reason, now=self.now())
        else:
            body = await self._body(request, {"catchup": bool})
            await self.store(operate.resume, self.daemon.store, names,
                             jobs=dict(self.daemon.catalog.jobs),
                             catchup=bool(body.get("catchup")), now=self.now())
        self.daemon.circuits += 1
        self.recent.clear()

    async def pause(self, request: Request) -> Response:
        job = self._loaded_job(request)
        await self._paused(request, [job.name], pause=True)
        return await self.get_job(request)

    async def resume(self, request: Request) -> Response:
        job = self._loaded_job(request)
        await self._paused(request, [job.name], pause=False)
        return await self.get_job(request)

    async def pause_all(self, request: Request) -> Response:
        names = sorted(self.daemon.catalog.jobs)
        await self._paused(request, names, pause=True)
        return JSONResponse({"jobs": names, "paused": True})

    async def resume_all(self, request: Request) -> Response:
        names = sorted(self.daemon.catalog.jobs)
        await self._paused(request, names, pause=False)
        return JSONResponse({"jobs": names, "paused": False})

    async def backfill(self, request: Request) -> Response:
        job = self._loaded_job(request)
        body = await self._body(request, {"from": str, "to": str, "rerun": str,
                                          "max_parallel": int})
        for key in ("from", "to"):
            if not body.get(key):  # missing, or empty: an empty form field
                raise ApiError(400, "bad_body", f'"{key}" is required (an ISO 8601 time)')
        start = time_param(body["from"], "from")
        end = time_param(body["to"], "to")
        assert start is not None and end is not None
        rerun = body.get("rerun") or "none"
        if rerun not in ("none", "failed", "all"):
            raise ApiError(400, "bad_body", '"rerun" is one of none, failed, all')
        parallel = body.get("max_parallel") or 1
        if not 1 <= parallel <= 1000:
            raise ApiError(400, "bad_body", '"max_parallel" is from 1 to 1000')
        try:
            instants = operate.backfill_instants(job, start, end)
        except operate.Refused as exc:
            raise ApiError(409, "refused", str(exc)) from None
        version = self.daemon.scheduler.version(job.name) or Version(sha256=job.sha256)
        made, left = await self.store(operate.backfill, self.daemon.store, job, instants,
                                      rerun=rerun, max_parallel=parallel, now=self.now(),
                                      version=version)
        self.daemon.worker.poke()
        self.recent.clear()
        return JSONResponse({"job": job.name, "run_ids": made,
                             "left_alone": [{"fire_time": iso(i), "run_id": r.id,
                                             "status": str(r.status)} for i, r in left]},
                            status_code=202)

    async def rerun(self, request: Request) -> Response:
        record = await self._run(request.path_params["run_id"])
        body = await self._body(request, {"from_step": str, "failed": bool})
        job = self.daemon.catalog.jobs.get(record.job)
        if job is None:
            raise ApiError(409, "refused", f"job {record.job} is not loaded: nothing to rerun "
                                           "it from")
        try:
            reuse = operate.rerun_reuse(job, record, from_step=body.get("from_step"),
                                        failed=bool(body.get("failed")))
        except operate.Refused as exc:
            raise ApiError(409, "refused", str(exc)) from None
        version = self.daemon.scheduler.version(job.name) or Version(sha256=job.sha256)
        run_id = await self.store(operate.rerun, self.daemon.store, record, job, reuse=reuse,
                                  now=self.now(), version=version)
        self.daemon.worker.poke()
        self.recent.clear()
        url = f"/api/v1/runs/{run_id}"
        return JSONResponse({"run_id": run_id, "rerun_of": record.id, "url": url,
                             "changed": record.version is not None
                             and record.version.sha256 != job.sha256},
                            status_code=202, headers={"Location": url})

    async def decisions(self, request: Request) -> Response:
        name = match(request.path_params["name"], JOB_NAME, "job")
        query = request.query_params
        since = time_param(query.get("since"), "since")
        until = time_param(query.get("until"), "until")
        limit = integer(request, "limit", 50, 1, MAX_LIMIT)
        found = await self.store(self.daemon.store.decisions, name, since=since, until=until,
                                 limit=limit)
        if not found and name not in self.daemon.catalog.jobs:
            raise ApiError(404, "not_found", f"no job {name!r}")
        return JSONResponse({"job": name, "decisions": [
            {"fire_time": iso(d.fire_time), "decided_at": iso(d.decided_at),
             "outcome": str(d.outcome), "reason": d.reason, "detail": d.detail,
             "run_id": d.run_id, "node": d.node} for d in found]})

    # -- runs --------------------------------------------------------------------------------

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        job = query.get("job") or None
        if job is not None and not JOB_NAME.fullmatch(job):
            raise ApiError(400, "bad_query", f"job must match {JOB_NAME.pattern}")
        status = one_of(RunStatus, query.get("status"), "status")
        trigger = one_of(Trigger, query.get("trigger"), "trigger")
        since = time_param(query.get("since"), "since")
        limit = integer(request, "limit", 50, 1, MAX_LIMIT)
        offset = integer(request, "offset", 0, 0, 10**9)

        def read() -> Encoded:
            store = self.daemon.store
            found = store.runs(job=job, status=status, trigger=trigger, since=since,
                               limit=limit, offset=offset)
            total = store.count_runs(job=job, status=status, trigger=trigger, since=since)
            more = offset + len(found) < total
            return encode_shared({"runs": [run_as_dict(r, steps=False) for r in found],
                                  "total": total, "limit": limit, "offset": offset,
                                  "next_offset": offset + len(found) if more else None})

        key = "runs?" + "&".join(f"{k}={v}" for k, v in (
            ("job", job), ("status", status), ("trigger", trigger), ("since", since),
            ("limit", limit), ("offset", offset)))
        return shared_answer(request, await self.recent.get(key, partial(self.store, read)))

    async def _run(self, run_id: str) -> RunRecord:
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

    async def get_run(self, request: Request) -> Response:
        """One run; with ``?wait=SECONDS``, answer once it has finished or the time is up."""
        run_id = request.path_params["run_id"]
        record = await self._run(run_id)
        wait = number(request.query_params.get("wait"), "wait", 0.0, MAX_WAIT)
        if wait and not record.status.finished:
            with trio.move_on_after(wait):
                while not record.status.finished:
                    local = self.daemon.worker.runs.get(run_id)
                    with trio.move_on_after(1.0 if local else 0.2):  # elsewhere: poll
                        await (local.done if local else trio.Event()).wait()
                    record = await self._run(run_id)
            record = await self._run(run_id)
        return JSONResponse(self.run_view(record))

    async def stop(self, request: Request) -> Response:
        run_id = match(request.path_params["run_id"], RUN_ID, "run")
        stopped = await self.daemon.worker.request_stop(run_id)
        if stopped is not None:
            self.recent.clear()
            return JSONResponse({"run_id": run_id, "status": "stopping"}, status_code=202)
        record = await self._run(run_id)
        raise ApiError(409, "not_active", f"run {run_id} is not running (status: "
                                          f"{record.status})", {"status": str(record.status)})

    async def delete_run(self, request: Request) -> Response:
        run_id = match(request.path_params["run_id"], RUN_ID, "run")
        try:
            record = await self.store(self.daemon.store.delete_run, run_id)
        except RunActive:
            raise ApiError(409, "active", f"run {run_id} is still active; stop it first, "
                                          f"then delete it") from None
        if record is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        self.recent.clear()
        if JOB_NAME.fullmatch(record.job):
            logs = self.state_dir / "logs" / record.job / run_id
            await trio.to_thread.run_sync(partial(shutil.rmtree, logs, ignore_errors=True))
        return JSONResponse({"id": run_id, "job": record.job, "deleted": True})

    # -- logs --------------------------------------------------------------------------------

    async def step_log(self, request: Request) -> Response:
        """A step's log as text from ``?offset=`` bytes; ``?follow=1`` streams it to the end.

        The ``X-Log-Offset`` header says where the text starts: a follower that lost its
        connection resumes with ``offset`` = that plus what it received.
        """
        step_id = match(request.path_params["step"], STEP_INSTANCE_ID, "step")
        record = await self._run(request.path_params["run_id"])
        offset = integer(request, "offset", 0, 0, 2**62)
        follow = flag(request, "follow")
        if not any(s.id == step_id for s in record.steps):
            if record.status.finished or not declares(record, step_id):
                raise ApiError(404, "not_found", f"run {record.id} has no step {step_id!r}")
            if not follow:  # declared, and not started yet: no output so far
                return Response(b"", media_type="text/plain; charset=utf-8",
                                headers={"X-Log-Offset": str(offset)})
        path = self.state_dir / log_relpath(record.job, record.id, step_id)
        if self.daemon.store.shared and (
                not await trio.to_thread.run_sync(path.exists) or await self.store(
                    shipped_whole, self.daemon.store, record.id, step_id)):
            # Another node ran it (or ran its last attempt): its log was shipped to the store.
            stream = self._shipped(record.id, step_id, offset, follow)
        else:
            stream = (self._follow(record.id, step_id, path, offset) if follow
                      else self._read_to_end(path, offset))
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8",
                                 headers={"X-Log-Offset": str(offset)})

    async def _shipped(self, run_id: str, step_id: str, offset: int,
                       follow: bool) -> AsyncIterator[bytes]:
        store = self.daemon.store
        while True:
            data, size = await self.store(store.shipped_log, run_id, step_id, offset,
                                          LOG_CHUNK)
            if data:
                offset += len(data)
                yield data
                continue
            if not follow or size is not None:
                return
            record = await self.store(store.run, run_id)
            # Ended without a final shipment (its node was lost): what is there is all.
            if record is None or (record.status.finished and (
                    record.finished_at is None
                    or (self.now() - record.finished_at).total_seconds() > 5)):
                return
            await trio.sleep(FOLLOW_POLL)

    async def _read_to_end(self, path: Path, offset: int) -> AsyncIterator[bytes]:
        end = await trio.to_thread.run_sync(log_size, path)
        while offset < end:
            data = await trio.to_thread.run_sync(read_log, path, offset,
                                                 min(LOG_CHUNK, end - offset))
            if not data:
                return
            offset += len(data)
            yield data

    async def _follow(self, run_id: str, step_id: str, path: Path,
                      offset: int) -> AsyncIterator[bytes]:
        while True:
            data = await trio.to_thread.run_sync(read_log, path, offset, LOG_CHUNK)
            if data:
                offset += len(data)
                yield data
                continue
            record = await self.store(self.daemon.store.run, run_id)
            step = next((s for s in record.steps if s.id == step_id), None) if record else None
            if record is None or record.status.finished or (step and step.status.finished):
                # The engine closes the log before it records the end: what is there now is all.
                async for rest in self._read_to_end(path, offset):
                    yield rest
                return
            await trio.sleep(FOLLOW_POLL)

    # -- metrics -----------------------------------------------------------------------------

    async def _fresh_metrics(self) -> None:
        """Give the gauges the live state, and seed last-success times from the store."""
        daemon = self.daemon
        missing = daemon.metrics.needs_seed(daemon.catalog.jobs)
        if missing:
            found = await self.store(lambda: {n: daemon.store.last_success(n) for n in missing})
            for name, at in found.items():
                daemon.metrics.seed_last_success(name, at)
        _, active, states = await self.store(self._last_and_active)
        nodes = await self.store(lambda: node_views(daemon.store.nodes(), daemon.store.now()))
        pools = await self.store(daemon.store.pools)
        daemon.metrics.update(dataclasses.replace(
            self.snapshot(active, states, nodes),
            pools={p.name: (p.slots, p.used, p.waiting) for p in pools}))

    def snapshot(self, active: list[RunRecord], states: Mapping[str, JobState],
                 nodes: Sequence[Mapping[str, Any]] = ()) -> Snapshot:
        """The scheduler's, the store's and the catalog's state now (trio thread only)."""
        scheduler = self.daemon.scheduler
        now = self.now()
        jobs = self.daemon.catalog.jobs
        running = Counter(r.job for r in active if r.status is RunStatus.RUNNING)
        queued = Counter(r.job for r in active if r.status is RunStatus.QUEUED)
        next_fires = {n: scheduler.next_fire(n) for n in jobs}
        return Snapshot(
            jobs=len(jobs), active=dict(running), queued=dict(queued),
            circuits_open=frozenset(
                n for n, job in jobs.items() if n in states and circuit_open(
                    job.circuit_breaker, states[n].failures, states[n].circuit_opened_at,
                    now)),
            next_fire={n: f.timestamp() for n, f in next_fires.items() if f},
            invalid_files=len(self.daemon.catalog.problems),
            journal_healthy=self.daemon.journal.healthy,
            started_at=self.daemon.started_at.timestamp(),
            nodes={n["name"]: (n["state"] == "alive", n["active_runs"],
                               n["heartbeat_age_s"] or 0.0, n["jobs_match"])
                   for n in nodes if n["state"] == "alive" or n["active_runs"]})

    async def metrics(self, request: Request) -> Response:
        await self._fresh_metrics()
        body = await trio.to_thread.run_sync(self.daemon.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    async def metrics_json(self, request: Request) -> Response:
        await self._fresh_metrics()
        metrics = self.daemon.metrics
        return JSONResponse(await trio.to_thread.run_sync(lambda: dumps(metrics.as_json())))

    # -- the rest ----------------------------------------------------------------------------

    async def list_nodes(self, request: Request) -> Response:
        store = self.daemon.store

        def read() -> list[dict[str, Any]]:
            return node_views(store.nodes(), store.now())

        return JSONResponse({"nodes": await self.store(read)})

    async def list_pools(self, request: Request) -> Response:
        found = await self.store(self.daemon.store.pools)
        return JSONResponse({"pools": [
            {"name": p.name, "slots": p.slots, "used": p.used, "waiting": p.waiting}
            for p in found if p.name != "*"],
            "max_active_runs": next(({"slots": p.slots, "used": p.used, "waiting": p.waiting}
                                     for p in found if p.name == "*"), None)})

    async def job_graph(self, request: Request) -> Response:
        """Which loaded jobs fire after which (``pipeline graph --jobs``): the jobs an
        ``after:`` connects, or with ``?all=1`` every job; a name whose file is invalid now
        is not ``loaded``."""
        catalog = self.daemon.catalog
        edges = jobgraph.edges(catalog.jobs)
        names = {*(e.upstream for e in edges), *(e.downstream for e in edges)}
        if flag(request, "all"):
            names |= {*catalog.jobs, *catalog.files.values()}
        return JSONResponse({
            "jobs": [{"name": n, "loaded": n in catalog.jobs} for n in sorted(names)],
            "edges": [{"upstream": e.upstream, "downstream": e.downstream,
                       "status": [str(s) for s in e.status]} for e in edges]})

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



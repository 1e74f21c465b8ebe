"""The jobs' routes: the list, one job, a run made now, a circuit closed, and which jobs fire
after which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import Response

from pipeline import jobgraph
from pipeline.http.answers import ApiError, Encoded, JSONResponse, encode_shared, shared_answer
from pipeline.http.reading import flag, match, read_json
from pipeline.model import JOB_NAME, RunStatus, Trigger
from pipeline.params import parse_params

if TYPE_CHECKING:
    from pipeline.http.app import StatusApp


class JobRoutes:
    """The routes of ``/api/v1/jobs`` and ``/api/v1/graph``, over the app's reads."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app

    async def list_jobs(self, request: Request) -> Response:
        async def build() -> Encoded:
            views = await self.app.shown_jobs()
            return await trio.to_thread.run_sync(encode_shared, {"jobs": views})

        return shared_answer(request, await self.app.recent.get("jobs.json", build))

    async def get_job(self, request: Request) -> Response:
        name = match(request.path_params["name"], JOB_NAME, "job")
        for view in await self.app.shown_jobs():
            if view["name"] == name:
                return JSONResponse(view)
        raise ApiError(404, "not_found", f"no job {name!r}")

    async def trigger(self, request: Request) -> Response:
        job = self.app.loaded_job(request)
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
        values = parse_params(job, given)  # JSON values, typed by the job's declaration
        dispatched, _ = await self.app.daemon.worker.trigger(job, values, trigger=Trigger.API)
        self.app.recent.clear()  # a client reads its own writes
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
        job = self.app.loaded_job(request)
        await self.app.store(self.app.daemon.store.reset_circuit, job.name, self.app.now())
        self.app.daemon.circuits += 1
        self.app.recent.clear()
        return JSONResponse({"job": job.name, "circuit": "closed"})

    async def job_graph(self, request: Request) -> Response:
        """Which loaded jobs fire after which (``pipeline graph --jobs``): the jobs an
        ``after:`` connects, or with ``?all=1`` every job; a name whose file is invalid now
        is not ``loaded``."""
        catalog = self.app.daemon.catalog
        edges = jobgraph.edges(catalog.jobs)
        names = {*(e.upstream for e in edges), *(e.downstream for e in edges)}
        if flag(request, "all"):
            names |= {*catalog.jobs, *catalog.files.values()}
        return JSONResponse({
            "jobs": [{"name": n, "loaded": n in catalog.jobs} for n in sorted(names)],
            "edges": [{"upstream": e.upstream, "downstream": e.downstream,
                       "status": [str(s) for s in e.status]} for e in edges]})

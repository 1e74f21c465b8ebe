"""The operator's routes: pause and resume (a job, or all), backfill, rerun, and the decision
log that says what the scheduler made of each fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from pipeline import operate
from pipeline.http.answers import ApiError, JSONResponse
from pipeline.http.guard import MAX_LIMIT
from pipeline.http.reading import integer, match, read_json, time_param
from pipeline.model import JOB_NAME, iso
from pipeline.runrecords import Version

if TYPE_CHECKING:
    from pipeline.http.app import StatusApp


class ControlRoutes:
    """The operator's routes, over the app's reads; each change clears the shared answers."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app

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
            await self.app.store(operate.pause, self.app.daemon.store, names, by=self._who(request),
                                 reason=reason, now=self.app.now())
        else:
            body = await self._body(request, {"catchup": bool})
            await self.app.store(operate.resume, self.app.daemon.store, names,
                                 jobs=dict(self.app.daemon.catalog.jobs),
                                 catchup=bool(body.get("catchup")), now=self.app.now())
        self.app.daemon.circuits += 1
        self.app.recent.clear()

    async def pause(self, request: Request) -> Response:
        job = self.app.loaded_job(request)
        await self._paused(request, [job.name], pause=True)
        return await self.app.jobs.get_job(request)

    async def resume(self, request: Request) -> Response:
        job = self.app.loaded_job(request)
        await self._paused(request, [job.name], pause=False)
        return await self.app.jobs.get_job(request)

    async def pause_all(self, request: Request) -> Response:
        names = sorted(self.app.daemon.catalog.jobs)
        await self._paused(request, names, pause=True)
        return JSONResponse({"jobs": names, "paused": True})

    async def resume_all(self, request: Request) -> Response:
        names = sorted(self.app.daemon.catalog.jobs)
        await self._paused(request, names, pause=False)
        return JSONResponse({"jobs": names, "paused": False})

    async def backfill(self, request: Request) -> Response:
        job = self.app.loaded_job(request)
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
        version = self.app.daemon.scheduler.version(job.name) or Version(sha256=job.sha256)
        made, left = await self.app.store(operate.backfill, self.app.daemon.store, job, instants,
                                          rerun=rerun, max_parallel=parallel, now=self.app.now(),
                                          version=version)
        self.app.daemon.worker.poke()
        self.app.recent.clear()
        return JSONResponse({"job": job.name, "run_ids": made,
                             "left_alone": [{"fire_time": iso(i), "run_id": r.id,
                                             "status": str(r.status)} for i, r in left]},
                            status_code=202)

    async def rerun(self, request: Request) -> Response:
        record = await self.app.read_run(request.path_params["run_id"])
        body = await self._body(request, {"from_step": str, "failed": bool})
        job = self.app.daemon.catalog.jobs.get(record.job)
        if job is None:
            raise ApiError(409, "refused", f"job {record.job} is not loaded: nothing to rerun "
                                           "it from")
        try:
            reuse = operate.rerun_reuse(job, record, from_step=body.get("from_step"),
                                        failed=bool(body.get("failed")))
        except operate.Refused as exc:
            raise ApiError(409, "refused", str(exc)) from None
        version = self.app.daemon.scheduler.version(job.name) or Version(sha256=job.sha256)
        run_id = await self.app.store(operate.rerun, self.app.daemon.store, record, job,
                                      reuse=reuse, now=self.app.now(), version=version)
        self.app.daemon.worker.poke()
        self.app.recent.clear()
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
        found = await self.app.store(self.app.daemon.store.decisions, name, since=since,
                                     until=until, limit=limit)
        if not found and name not in self.app.daemon.catalog.jobs:
            raise ApiError(404, "not_found", f"no job {name!r}")
        return JSONResponse({"job": name, "decisions": [
            {"fire_time": iso(d.fire_time), "decided_at": iso(d.decided_at),
             "outcome": str(d.outcome), "reason": d.reason, "detail": d.detail,
             "run_id": d.run_id, "node": d.node} for d in found]})

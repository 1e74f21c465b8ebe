"""The runs' routes: the list, one run (waiting for its end if asked), stop, delete, and a
step's log as text from an offset, followed to its end if asked (from the state directory, or
from the store when another node ran the step).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeline.errors import RunActive
from pipeline.http.answers import ApiError, Encoded, JSONResponse, encode_shared, shared_answer
from pipeline.http.guard import MAX_LIMIT, MAX_WAIT
from pipeline.http.reading import flag, integer, match, number, one_of, time_param
from pipeline.http.views import declares, log_size, read_log
from pipeline.logship import shipped_whole
from pipeline.model import JOB_NAME, RUN_ID, STEP_INSTANCE_ID, RunStatus, Trigger
from pipeline.statedir import log_relpath
from pipeline.views import run_as_dict

if TYPE_CHECKING:
    from pipeline.http.app import StatusApp

LOG_CHUNK = 64 * 1024
FOLLOW_POLL = 0.25  # seconds between looks at a followed log that has nothing new


class RunRoutes:
    """The routes of ``/api/v1/runs``, over the app's reads."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app

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
            store = self.app.daemon.store
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
        return shared_answer(request, await self.app.recent.get(key, partial(self.app.store, read)))

    async def get_run(self, request: Request) -> Response:
        """One run; with ``?wait=SECONDS``, answer once it has finished or the time is up."""
        run_id = request.path_params["run_id"]
        record = await self.app.read_run(run_id)
        wait = number(request.query_params.get("wait"), "wait", 0.0, MAX_WAIT)
        if wait and not record.status.finished:
            with trio.move_on_after(wait):
                while not record.status.finished:
                    local = self.app.daemon.worker.local.runs.get(run_id)
                    with trio.move_on_after(1.0 if local else 0.2):  # elsewhere: poll
                        await (local.done if local else trio.Event()).wait()
                    record = await self.app.read_run(run_id)
            record = await self.app.read_run(run_id)
        return JSONResponse(self.app.run_view(record))

    async def stop(self, request: Request) -> Response:
        run_id = match(request.path_params["run_id"], RUN_ID, "run")
        stopped = await self.app.daemon.worker.request_stop(run_id)
        if stopped is not None:
            self.app.recent.clear()
            return JSONResponse({"run_id": run_id, "status": "stopping"}, status_code=202)
        record = await self.app.read_run(run_id)
        raise ApiError(409, "not_active", f"run {run_id} is not running (status: "
                                          f"{record.status})", {"status": str(record.status)})

    async def delete_run(self, request: Request) -> Response:
        run_id = match(request.path_params["run_id"], RUN_ID, "run")
        try:
            record = await self.app.store(self.app.daemon.store.delete_run, run_id)
        except RunActive:
            raise ApiError(409, "active", f"run {run_id} is still active; stop it first, "
                                          f"then delete it") from None
        if record is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        self.app.recent.clear()
        if JOB_NAME.fullmatch(record.job):
            logs = self.app.state_dir / "logs" / record.job / run_id
            await trio.to_thread.run_sync(partial(shutil.rmtree, logs, ignore_errors=True))
        return JSONResponse({"id": run_id, "job": record.job, "deleted": True})

    async def step_log(self, request: Request) -> Response:
        """A step's log as text from ``?offset=`` bytes; ``?follow=1`` streams it to the end.

        The ``X-Log-Offset`` header says where the text starts: a follower that lost its
        connection resumes with ``offset`` = that plus what it received.
        """
        step_id = match(request.path_params["step"], STEP_INSTANCE_ID, "step")
        record = await self.app.read_run(request.path_params["run_id"])
        offset = integer(request, "offset", 0, 0, 2**62)
        follow = flag(request, "follow")
        if not any(s.id == step_id for s in record.steps):
            if record.status.finished or not declares(record, step_id):
                raise ApiError(404, "not_found", f"run {record.id} has no step {step_id!r}")
            if not follow:  # declared, and not started yet: no output so far
                return Response(b"", media_type="text/plain; charset=utf-8",
                                headers={"X-Log-Offset": str(offset)})
        path = self.app.state_dir / log_relpath(record.job, record.id, step_id)
        if self.app.daemon.store.shared and (
                not await trio.to_thread.run_sync(path.exists) or await self.app.store(
                    shipped_whole, self.app.daemon.store, record.id, step_id)):
            # Another node ran it (or ran its last attempt): its log was shipped to the store.
            stream = self._shipped(record.id, step_id, offset, follow)
        else:
            stream = (self._follow(record.id, step_id, path, offset) if follow
                      else self._read_to_end(path, offset))
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8",
                                 headers={"X-Log-Offset": str(offset)})

    async def _shipped(self, run_id: str, step_id: str, offset: int,
                       follow: bool) -> AsyncIterator[bytes]:
        store = self.app.daemon.store
        while True:
            data, size = await self.app.store(store.shipped_log, run_id, step_id, offset,
                                              LOG_CHUNK)
            if data:
                offset += len(data)
                yield data
                continue
            if not follow or size is not None:
                return
            record = await self.app.store(store.run, run_id)
            # Ended without a final shipment (its node was lost): what is there is all.
            if record is None or (record.status.finished and (
                    record.finished_at is None
                    or (self.app.now() - record.finished_at).total_seconds() > 5)):
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
            record = await self.app.store(self.app.daemon.store.run, run_id)
            step = next((s for s in record.steps if s.id == step_id), None) if record else None
            if record is None or record.status.finished or (step and step.status.finished):
                # The engine closes the log before it records the end: what is there now is all.
                async for rest in self._read_to_end(path, offset):
                    yield rest
                return
            await trio.sleep(FOLLOW_POLL)

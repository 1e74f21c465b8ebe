"""A run's page: its steps, timeline, graph and each step's log tail (colours kept, lines
filtered by ``?grep=``), live while the run is active; and a log's next lines as HTML, which
the page's script asks for to follow a log."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pipeline import ansi
from pipeline.http.answers import ApiError, error_page
from pipeline.http.reading import integer
from pipeline.http.rungraph import graph, step_statuses
from pipeline.http.timeline import attempt_markers, timeline
from pipeline.http.views import declared_steps, log_size, log_tail, read_log
from pipeline.model import RUN_ID, STEP_INSTANCE_ID, StepStatus
from pipeline.notation import parse_duration
from pipeline.runrecords import RunRecord, in_file_order
from pipeline.statedir import log_relpath
from pipeline.views import failed_steps, version_differs

if TYPE_CHECKING:
    from pipeline.http.site import Site

RUN_PAGE_REFRESH = 2  # seconds between live updates of an active run's page
# Of each step's log, the run page shows the tail: more of the logs it opens (a failed or
# running step's, or the only one), less of those it leaves closed; "raw" has them whole.
PAGE_LOG_TAIL = 48 * 1024
CLOSED_LOG_TAIL = 16 * 1024
LOG_FRAGMENT = 64 * 1024  # the most one ask for a log's next lines returns
MAX_MARKER_SCAN = 16 * 1024 * 1024  # bytes of a retried step's log read for attempt times


def _markers(path: Path) -> list[str]:
    """The ``[pipeline]`` lines of a retried step's log (up to ``MAX_MARKER_SCAN`` bytes)."""
    data = read_log(path, 0, MAX_MARKER_SCAN)
    return attempt_markers(data.decode(errors="replace"))


def _deadline(record: RunRecord) -> datetime | None:
    """When a late run had to have succeeded by: its fire time plus its job's ``deadline``
    (as the run's stored job says it); None if that cannot be told."""
    written = (record.document or {}).get("deadline")
    if not record.late or record.fire_time is None or written is None:
        return None
    try:
        return record.fire_time + timedelta(seconds=parse_duration(written))
    except (TypeError, ValueError):
        return None


class RunPage:
    """``/runs/{run_id}`` and ``/runs/{run_id}/log/{step}``, over the site's rendering."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.app = site.app

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if not RUN_ID.fullmatch(run_id):
            return error_page(404, f"no run {run_id[:80]!r}")
        live = request.query_params.get("live") == "1"
        grep = (request.query_params.get("grep") or "").strip()[:200] or None

        def read() -> tuple[RunRecord | None, RunRecord | None, dict[str, str]]:
            store = self.app.daemon.store
            record = store.run(run_id)
            # A rerun's original (gone if retention removed it): whose version it differs from.
            original = store.run(record.rerun_of) if record and record.rerun_of else None
            return record, original, self.site.node_names([record] if record else [])

        record, original, nodes = await self.app.store(read)
        if record is None:
            return error_page(404, f"no run {run_id!r}")
        view = self.app.run_view(record)
        active = not record.status.finished
        seen = {s.id.partition(".")[0] for s in record.steps}
        pending = [i for i in declared_steps(record) if i not in seen] if active else []
        state_dir = self.app.state_dir
        retried = {s.id: state_dir / log_relpath(record.job, record.id, s.id)
                   for s in record.steps if s.attempt > 1 and s.log
                   and STEP_INSTANCE_ID.fullmatch(s.id)}

        def markers() -> dict[str, list[str]]:
            return {sid: _markers(path) for sid, path in retried.items()}

        found = await trio.to_thread.run_sync(markers) if retried else {}
        now = self.app.now()
        statuses, counts = step_statuses(record, pending)
        logs = [] if live else await trio.to_thread.run_sync(
            partial(self._logs, record, grep))
        if live:  # the page's script keeps what it read; these say what there is now
            logs = [self._log_head(record, s.id, str(s.status)) for s in in_file_order(record)
                    if s.log and STEP_INSTANCE_ID.fullmatch(s.id)]
        if active:
            view["steps"] += [{"id": i, "status": "pending", "attempt": 0, "exit_code": None,
                               "signal": None, "duration_s": None, "error": None,
                               "outputs": {}, "log_url": None, "started_at": None}
                              for i in pending]
        view["node_name"] = nodes.get(record.node or "", record.node)
        return await self.site.html("run.html", request=request, context={
            "run": view, "logs": logs, "grep": grep or "",
            "timeline": timeline(record, now, found, pending),
            "graph": graph(record.document or {}, statuses, counts),
            "refresh": RUN_PAGE_REFRESH if active else 0, "noscript_refresh": True,
            "step_ids": [s for s in declared_steps(record)],
            "failed_steps": failed_steps(record),
            "deadline": _deadline(record),
            "original": None if original is None else {
                "id": original.id,
                "version": original.version.as_dict() if original.version else None,
                "version_differs": version_differs(original, record)},
        })

    def _log_head(self, record: RunRecord, step_id: str, status: str) -> dict[str, Any]:
        step = next(s for s in record.steps if s.id == step_id)
        return {"step": step_id, "status": status, "html": "", "hidden": 0, "skipped": 0,
                "size": None, "next": 0,
                "src": f"/runs/{record.id}/log/{step_id}",
                "url": f"/api/v1/runs/{record.id}/steps/{step_id}/log",
                "state": "done" if record.status.finished or step.status.finished
                else "running",
                "open": step.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)}

    def _logs(self, record: RunRecord, grep: str | None) -> list[dict[str, Any]]:
        """Each step's log tail as HTML (worker thread)."""
        logs = []
        steps = [s for s in in_file_order(record)
                 if s.log and STEP_INSTANCE_ID.fullmatch(s.id)]
        for step in steps:
            entry = self._log_head(record, step.id, str(step.status))
            if len(steps) == 1 or grep:
                entry["open"] = True
            path = self.app.state_dir / log_relpath(record.job, record.id, step.id)
            text, skipped, size = log_tail(path, PAGE_LOG_TAIL if entry["open"]
                                           else CLOSED_LOG_TAIL, keep_colors=True)
            next_offset = size
            if entry["state"] == "running" and not text.endswith("\n"):
                # The line being written comes whole with the next lines the page asks for.
                unfinished = text[text.rfind("\n") + 1:]
                text = text[:len(text) - len(unfinished)]
                next_offset = size - len(unfinished.encode())
            lines, hidden = ansi.lines_html(text, grep=grep)
            entry.update(html="".join(f'<span class="ln">{line}</span>' for line in lines),
                         hidden=hidden, skipped=skipped, size=size, next=next_offset)
            logs.append(entry)
        if grep:
            for entry in logs:
                entry["open"] = entry["html"] != ""
        return logs

    async def log_lines(self, request: Request) -> Response:
        """A step's log from ``?offset=`` as HTML lines: whole lines only while the step
        runs; ``X-Log-Next`` says where to ask from next, ``X-Log-Done: 1`` that this is
        all there will be."""
        run_id = request.path_params["run_id"]
        step_id = request.path_params["step"]
        if not RUN_ID.fullmatch(run_id) or not STEP_INSTANCE_ID.fullmatch(step_id):
            raise ApiError(404, "not_found", "no such log")
        offset = integer(request, "offset", 0, 0, 2**62)
        record = await self.app.store(self.app.daemon.store.run, run_id)
        step = next((s for s in record.steps if s.id == step_id), None) if record else None
        if record is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}")
        finished = record.status.finished or (step is not None and step.status.finished)
        path = self.app.state_dir / log_relpath(record.job, record.id, step_id)

        def read() -> tuple[bytes, int]:
            size = log_size(path)
            return read_log(path, offset, min(LOG_FRAGMENT, max(size - offset, 0))), size

        data, size = await trio.to_thread.run_sync(read)
        if not finished and b"\n" in data:
            data = data[:data.rindex(b"\n") + 1]  # a line still being written comes later
        elif not finished:
            data = b""
        next_offset = offset + len(data)
        done = finished and next_offset >= size
        body = ansi.to_html(data.decode(errors="replace"))
        return HTMLResponse(body, headers={"X-Log-Offset": str(offset),
                                           "X-Log-Next": str(next_offset),
                                           "X-Log-Done": "1" if done else "0"})

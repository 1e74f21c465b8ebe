"""The status pages: the index, a job's page, a run's page and a log's next lines (those two
drawn by ``runpage``), and the two local assets (stylesheet and script) they share.

Every page is complete HTML from the server: it reads, links and filters (GET forms) without
a script. ``pipeline.js`` adds what needs one: the controls post JSON to the API, the
sections marked ``data-live`` of an active page are fetched again (``?live=1``, which skips
reading logs) and swapped in place, and logs follow by asking for their next lines
(``/runs/ID/log/STEP?offset=N``, HTML rendered here, colours included).

Controls are shown only where they can work: not in read-only mode, and the operator
controls that need an API route (pause, resume, backfill, rerun, the decision log) only
once the app has that route.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from pipeline import page, schedule_words
from pipeline.http.answers import ApiError, error_page
from pipeline.http.pages import durations, next_fires, param_fields, source_lines
from pipeline.http.reading import integer
from pipeline.http.runpage import RunPage
from pipeline.model import JOB_NAME, Job, RunStatus
from pipeline.notation import format_duration, parse_duration
from pipeline.runrecords import RunRecord
from pipeline.views import run_as_dict

if TYPE_CHECKING:
    from pipeline.http.app import StatusApp

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"pipeline.css": "text/css; charset=utf-8",
          "pipeline.js": "text/javascript; charset=utf-8"}
PAGE_REFRESH = 5  # seconds between live updates of the index; a live run page: faster
JOBS_PER_PAGE = 50
RUNS_PER_PAGE = 25
STRIP = 50  # runs in a job's strip
CHART = 100  # runs in its duration chart
GZIP_FROM = 4096  # bytes of HTML worth packing
NODE_NAMES_FOR = 30.0  # seconds a read of the nodes' names serves
JOB_STATES = ("paused", "stale", "circuit open", "disabled", "never ran")

# The API routes the operator controls post to; a control is shown once its route exists.
OPERATOR_ROUTES = {
    "pause": ("POST", "/api/v1/jobs/{name}/pause"),
    "resume": ("POST", "/api/v1/jobs/{name}/resume"),
    "backfill": ("POST", "/api/v1/jobs/{name}/backfill"),
    "rerun": ("POST", "/api/v1/runs/{run_id}/rerun"),
    "decisions": ("GET", "/api/v1/jobs/{name}/decisions"),
}


@dataclass(frozen=True)
class IndexQuery:
    """What the index is asked for: its filters (``?job=``, ``?q=``, ``?status=``,
    ``?since=``) and where its two lists start (``?offset=``, ``?jobs_from=``)."""

    job: str | None  # list the runs of this job only
    name: str  # list the jobs whose name holds this
    status: str  # a run status (filters both lists) or a job state (the jobs only)
    run_status: RunStatus | None
    since_text: str  # as written, for the page's links
    since: datetime | None
    offset: int
    jobs_from: int


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    digest: str


def load_assets() -> dict[str, Asset]:
    return {name: Asset(data, kind, hashlib.sha256(data).hexdigest()[:12])
            for name, kind in ASSETS.items()
            for data in [(STATIC / name).read_bytes()]}


def timed(handler: Callable[[Request], Awaitable[Response]],
          ) -> Callable[[Request], Awaitable[Response]]:
    """``handler``, its answer carrying the time it took (``Server-Timing: app;dur=MS``): what
    the page benchmark reads, and what a browser's developer tools show."""
    async def answer(request: Request) -> Response:
        started = time.perf_counter()
        response = await handler(request)
        response.headers["Server-Timing"] = \
            f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response

    return answer


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# What the jobs list's "Next fire" column adds to a time, or says instead of one; its
# schedule column and badges say "manual only" and "disabled" already.
_COLUMN_NOTES = (schedule_words.NoteKind.EVENTS, schedule_words.NoteKind.ALSO_EVENTS,
                 schedule_words.NoteKind.OVER)


def _next_notes(views: Sequence[Mapping[str, Any]], loaded: Mapping[str, Job],
                now: datetime) -> dict[str, schedule_words.NextNote]:
    """The notes beside the jobs' next fires (``schedule_words.next_note``), by job name."""
    notes = {}
    for view in views:
        job = loaded.get(view["name"])
        if job is None:
            continue
        fire = datetime.fromisoformat(view["next_fire_time"]) if view["next_fire_time"] else None
        note = schedule_words.next_note(job.schedules, fire, now, enabled=job.enabled)
        if note is not None and note.kind in _COLUMN_NOTES:
            notes[view["name"]] = note
    return notes


def _stem_name(file: str) -> str | None:
    """The job name a file would give its job by default, if that is a valid name."""
    stem = Path(file).stem
    return stem if JOB_NAME.fullmatch(stem) else None


def _shown(file: str, jobs_dir: Path) -> str:
    """A job file's path as the jobs directory's listing says it."""
    try:
        return str(Path(file).relative_to(jobs_dir))
    except ValueError:
        return file


class Site:
    """The pages, over the app's reads of the daemon."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app
        self.run_page = RunPage(self)
        self.assets = load_assets()
        self._names: tuple[float, dict[str, str]] | None = None
        self.asset_version = hashlib.sha256(
            "".join(a.digest for a in self.assets.values()).encode()).hexdigest()[:12]

    def routes(self) -> list[Route]:
        return [
            Route("/", timed(self.index), methods=["GET"]),
            Route("/jobs/{name}", timed(self.job), methods=["GET"]),
            Route("/runs/{run_id}", timed(self.run_page.run), methods=["GET"]),
            Route("/runs/{run_id}/log/{step}", timed(self.run_page.log_lines), methods=["GET"]),
            Route("/assets/{name}", self.asset, methods=["GET"], include_in_schema=False),
        ]

    # -- shared -----------------------------------------------------------------------------

    def offers(self) -> dict[str, bool]:
        """The operator controls the app can serve now (none in read-only mode)."""
        return {key: not self.app.read_only and self.app.offered(*route)
                for key, route in OPERATOR_ROUTES.items()}

    async def html(self, template: str, context: Mapping[str, Any], status: int = 200,
                   request: Request | None = None) -> Response:
        """``template`` rendered (in a worker thread), gzipped for a client that takes it."""
        values = {"assets": self.asset_version, "read_only": self.app.read_only,
                  "offers": self.offers(), **context}
        packs = request is not None and "gzip" in request.headers.get("accept-encoding", "")

        def render() -> tuple[bytes, bool]:
            body = page.render(template, values).encode()
            if packs and len(body) > GZIP_FROM:
                # A run's logs make a few hundred KB of HTML, a tenth of that packed: what a
                # phone on a slow link notices. Level 1: most of the gain, little CPU.
                return gzip.compress(body, compresslevel=1, mtime=0), True
            return body, False

        body, packed = await trio.to_thread.run_sync(render)
        headers = {"Vary": "Accept-Encoding"}
        if packed:
            headers["Content-Encoding"] = "gzip"
        return HTMLResponse(body, status_code=status, headers=headers)

    async def asset(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            raise ApiError(404, "not_found", "no such asset")
        # The pages name each asset with its digest (?v=), so a copy never goes stale.
        return Response(asset.body, media_type=asset.media_type, headers={
            "Cache-Control": "public, max-age=31536000, immutable", "ETag": asset.digest})

    def node_names(self, runs: Sequence[RunRecord]) -> dict[str, str]:
        """Node id -> name, for the ``runs``' "node" (store thread). This node's name is
        known; the others' are read at most every ``NODE_NAMES_FOR`` seconds: names do not
        change, and ``Store.nodes`` counts each node's running runs, which can cost a scan
        of the history."""
        lease = self.app.daemon.lease.node
        if all(r.node in (None, lease.id) for r in runs):
            return {lease.id: lease.name}
        known = self._names
        if known is None or time.monotonic() - known[0] > NODE_NAMES_FOR:
            known = self._names = (time.monotonic(), {
                n.id: n.name for n in self.app.daemon.store.nodes()})
        return {**known[1], lease.id: lease.name}

    # -- the index --------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        query = self._index_query(request)
        if isinstance(query, Response):
            return query
        now = self.app.now()
        views = await self.app.shown_jobs()
        named = {v["name"] for v in views if v["name"]}
        runs_job = query.job
        if runs_job is None and query.name in named:  # a name typed in full: its runs too
            runs_job = query.name
        runs, total, more, nodes, failed = await self._index_runs(query, runs_job, now)
        jobs = [v for v in views if v["name"] is not None]
        shown = [v for v in jobs if self._job_matches(v, query.name, query.status)]
        run_views = [run_as_dict(r, steps=False) for r in runs]
        for view in run_views:
            view["node_name"] = nodes.get(view["node"] or "", view["node"])
        page_jobs = shown[query.jobs_from:query.jobs_from + JOBS_PER_PAGE]
        loaded = self.app.daemon.catalog.jobs
        in_words = schedule_words.in_words
        words = {v["name"]: "; ".join(in_words(s) for s in loaded[v["name"]].schedules)
                 for v in page_jobs if v["name"] in loaded}
        journal = self.app.daemon.journal
        return await self.html("index.html", request=request, context={
            "jobs": page_jobs, "words": words, "notes": _next_notes(page_jobs, loaded, now),
            "jobs_total": len(jobs),
            "jobs_shown": len(shown), "jobs_from": query.jobs_from,
            "jobs_per_page": JOBS_PER_PAGE,
            "invalid": [{**v, "page_name": v["name"] or _stem_name(v["file"])}
                        for v in views if not v["valid"]],
            "runs": run_views, "total": total, "more": more, "offset": query.offset,
            "limit": RUNS_PER_PAGE, "job_filter": runs_job, "name_filter": query.name,
            "status": query.status, "since_filter": query.since_text,
            "run_statuses": [str(s) for s in RunStatus],
            "job_states": JOB_STATES,
            "show_nodes": len({r.node for r in runs if r.node}) > 1
            or self.app.daemon.store.shared,
            "stats": self._index_stats(views, failed),
            "daemon": {"started_at": self.app.daemon.started_at.isoformat(),
                       "jobs_dir": str(self.app.daemon.jobs_dir),
                       "journal_healthy": journal.healthy, "journal_failure": journal.failure},
            "refresh": PAGE_REFRESH,
        })

    def _index_query(self, request: Request) -> IndexQuery | Response:
        """The index's filters and pages as its query asks for them, or the error page that
        says which one is wrong."""
        query = request.query_params
        job = query.get("job") or None
        if job is not None and not JOB_NAME.fullmatch(job):
            return error_page(404, f"no job {job[:80]!r}")
        status = query.get("status") or ""
        run_status = None
        if status and status not in JOB_STATES:  # a job state filters the jobs only
            try:
                run_status = RunStatus(status)
            except ValueError:
                return error_page(400, f"status must be one of "
                                       f"{', '.join([*RunStatus, *JOB_STATES])}")
        since_text = query.get("since") or ""
        since: datetime | None = None
        if since_text:
            try:
                since = self.app.now() - timedelta(seconds=parse_duration(since_text))
            except ValueError:
                return error_page(400, "since must be a duration, like 24h")
        return IndexQuery(
            job=job, name=(query.get("q") or "").strip()[:100], status=status,
            run_status=run_status, since_text=since_text, since=since,
            offset=integer(request, "offset", 0, 0, 10**9),
            jobs_from=integer(request, "jobs_from", 0, 0, 10**9))

    async def _index_runs(self, query: IndexQuery, job: str | None, now: datetime,
                          ) -> tuple[list[RunRecord], int | None, bool, dict[str, str], int]:
        """The page of runs the index lists (of ``job``, if one), how many there are in all
        when that can be told cheaply, whether there are more, their nodes' names, and the
        count of runs failed in the last day."""

        def read() -> tuple[list[RunRecord], int | None, dict[str, str]]:
            store = self.app.daemon.store
            found = store.runs(job=job, status=query.run_status, since=query.since,
                               limit=RUNS_PER_PAGE + 1, offset=query.offset)
            # Counting a rare status means reading the whole history: only the plain list
            # (and one job's) says how many there are; a filtered one says whether there
            # are more.
            total = (store.count_runs(job=job)
                     if query.run_status is None and query.since is None else None)
            return found, total, self.node_names(found)

        runs, total, nodes = await self.app.store(read)
        # Like the lists of the API, shared by the requests of the next moments.
        failed = await self.app.recent.get("failed_24h", partial(
            self.app.store, self.app.daemon.store.count_runs, status=RunStatus.FAILED,
            since=now - timedelta(days=1)))
        return runs[:RUNS_PER_PAGE], total, len(runs) > RUNS_PER_PAGE, nodes, failed

    def _index_stats(self, views: Sequence[Mapping[str, Any]], failed: int) -> dict[str, int]:
        """The counts atop the index: jobs, runs running and queued, runs failed in the last
        day (``failed``), invalid files, open circuits, paused and stale jobs."""
        queued = sum(v["queued_runs"] for v in views)
        return {"jobs": len(self.app.daemon.catalog.jobs), "queued": queued,
                "running": sum(v["active_runs"] for v in views) - queued,
                "failed_24h": failed, "invalid": len(self.app.daemon.catalog.problems),
                "circuits_open": sum(v["circuit"] == "open" for v in views),
                "paused": sum(bool(v.get("paused")) for v in views),
                "stale": sum(bool(v["stale"]) for v in views)}

    @staticmethod
    def _job_matches(view: Mapping[str, Any], name: str, status: str) -> bool:
        if name and name.casefold() not in view["name"].casefold():
            return False
        if not status:
            return True
        last = view["last_run"]["status"] if view["last_run"] else None
        return bool({
            "paused": bool(view.get("paused")),
            "stale": bool(view["stale"]),
            "circuit open": view["circuit"] == "open",
            "disabled": view["enabled"] is False,
            "never ran": last is None,
            "running": view["active_runs"] > view["queued_runs"] or last == "running",
            "queued": view["queued_runs"] > 0,
        }.get(status, last == status))

    # -- a job ------------------------------------------------------------------------------

    async def job(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not JOB_NAME.fullmatch(name):
            return error_page(404, f"no job {name[:80]!r}")
        views = await self.app.shown_jobs()
        view = next((v for v in views if v["name"] == name), None)
        catalog = self.app.daemon.catalog
        job = catalog.jobs.get(name)
        offers = self.offers()

        def read() -> tuple[list[RunRecord], int, list[Any]]:
            store = self.app.daemon.store
            decisions = store.decisions(name, limit=20) if offers["decisions"] else []
            return store.runs(job=name, limit=CHART), store.count_runs(job=name), decisions

        runs, total, decisions = await self.app.store(read)
        file = catalog.stale.get(name) or (job.file if job else None)
        if file is None:  # a file that never loaded: its job would take the file's name
            file = next((f for f in catalog.problems
                         if Path(f).stem == name and f not in catalog.files), None)
        if view is None and job is None and not runs and file is None:
            return error_page(404, f"no job {name!r}: no job file names it, and it never ran")
        problems = catalog.problems.get(file, ()) if file else ()
        text = await trio.to_thread.run_sync(_read_text, Path(file)) if file else None
        now = self.app.now()
        scheduler_next = self.app.daemon.scheduler.next_fire(name) if job else None
        fires = next_fires(job, now) if job else []
        note = schedule_words.next_note(job.schedules, fires[0].at if fires else None, now) \
            if job and job.schedules else None
        strip = [run_as_dict(r, steps=False) for r in reversed(runs[:STRIP])]
        return await self.html("job.html", request=request, context={
            "name": name, "job": view, "loaded": job is not None,
            "words": [schedule_words.in_words(s) for s in job.schedules] if job else [],
            "fires": fires, "next_fire": scheduler_next, "next_note": note,
            "zone": str(job.schedules[0].timezone) if job and job.schedules else None,
            "strip": strip, "total": total, "chart": durations(runs),
            "fields": param_fields(job) if job else [],
            "source": source_lines(text, problems) if text is not None else None,
            "file": file, "problems": problems,
            "file_shown": _shown(file, self.app.daemon.jobs_dir) if file else None,
            "decisions": decisions,
            "facts": self._job_facts(job) if job else {},
            "refresh": PAGE_REFRESH if view and view["active_runs"] else 0,
        })

    @staticmethod
    def _job_facts(job: Any) -> dict[str, str]:
        facts = {"concurrency": str(job.concurrency.policy)
                 + (f", at most {job.concurrency.max_active} at once"
                    if job.concurrency.max_active else "")}
        if job.timeout:
            facts["timeout"] = format_duration(job.timeout)
        if job.retries.limit:
            facts["retries"] = (f"{job.retries.limit}, {job.retries.backoff} from "
                                f"{format_duration(job.retries.delay)}")
        if job.circuit_breaker:
            facts["circuit breaker"] = (
                f"open after {job.circuit_breaker.after} failed runs, for "
                f"{format_duration(job.circuit_breaker.cooldown)}")
        facts["steps"] = str(len(job.steps)) + (
            f" (+{len(job.all_steps()) - len(job.steps)} hook steps)"
            if len(job.all_steps()) > len(job.steps) else "")
        facts["version"] = f"sha256:{job.sha256[:16]}"
        return facts

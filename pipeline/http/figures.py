"""What the daemon reports of itself: its Prometheus metrics (and the same figures as JSON),
the nodes of its store, and its pools' slots.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from pipeline.http.answers import JSONResponse, dumps
from pipeline.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pipeline.metrics import Snapshot
from pipeline.model import RunStatus
from pipeline.nodes import node_views
from pipeline.policy import circuit_open
from pipeline.runrecords import RunRecord
from pipeline.store.records import JobState

if TYPE_CHECKING:
    from pipeline.http.app import StatusApp


class FigureRoutes:
    """``/metrics``, ``/api/v1/metrics``, ``/api/v1/nodes`` and ``/api/v1/pools``."""

    def __init__(self, app: StatusApp) -> None:
        self.app = app

    async def _fresh_metrics(self) -> None:
        """Give the gauges the live state, and seed last-success times from the store."""
        daemon = self.app.daemon
        missing = daemon.metrics.needs_seed(daemon.catalog.jobs)
        if missing:
            found = await self.app.store(lambda: {n: daemon.store.last_success(n) for n in missing})
            for name, at in found.items():
                daemon.metrics.seed_last_success(name, at)
        _, active, states = await self.app.store(self.app.last_and_active)
        nodes = await self.app.store(lambda: node_views(daemon.store.nodes(), daemon.store.now()))
        pools = await self.app.store(daemon.store.pools)
        daemon.metrics.update(dataclasses.replace(
            self.snapshot(active, states, nodes),
            pools={p.name: (p.slots, p.used, p.waiting) for p in pools}))

    def snapshot(self, active: list[RunRecord], states: Mapping[str, JobState],
                 nodes: Sequence[Mapping[str, Any]] = ()) -> Snapshot:
        """The scheduler's, the store's and the catalog's state now (trio thread only)."""
        scheduler = self.app.daemon.scheduler
        now = self.app.now()
        jobs = self.app.daemon.catalog.jobs
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
            invalid_files=len(self.app.daemon.catalog.problems),
            journal_healthy=self.app.daemon.journal.healthy,
            started_at=self.app.daemon.started_at.timestamp(),
            nodes={n["name"]: (n["state"] == "alive", n["active_runs"],
                               n["heartbeat_age_s"] or 0.0, n["jobs_match"])
                   for n in nodes if n["state"] == "alive" or n["active_runs"]})

    async def metrics(self, request: Request) -> Response:
        await self._fresh_metrics()
        body = await trio.to_thread.run_sync(self.app.daemon.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    async def metrics_json(self, request: Request) -> Response:
        await self._fresh_metrics()
        metrics = self.app.daemon.metrics
        return JSONResponse(await trio.to_thread.run_sync(lambda: dumps(metrics.as_json())))

    async def list_nodes(self, request: Request) -> Response:
        store = self.app.daemon.store

        def read() -> list[dict[str, Any]]:
            return node_views(store.nodes(), store.now())

        return JSONResponse({"nodes": await self.app.store(read)})

    async def list_pools(self, request: Request) -> Response:
        found = await self.app.store(self.app.daemon.store.pools)
        return JSONResponse({"pools": [
            {"name": p.name, "slots": p.slots, "used": p.used, "waiting": p.waiting}
            for p in found if p.name != "*"],
            "max_active_runs": next(({"slots": p.slots, "used": p.used, "waiting": p.waiting}
                                     for p in found if p.name == "*"), None)})

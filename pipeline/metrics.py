"""The daemon's figures for Prometheus, fed by the same event records the store writes.

Two kinds of figure live here. Counters and histograms (runs by job and status, run and step
durations, fire lateness, last success) move with each event, in ``observe``, which the journal
calls synchronously for every event it writes. Gauges of the daemon's present state (active and
queued runs, open circuit breakers, invalid job files) are read from a ``Snapshot`` that the
HTTP app takes in the trio thread just before a scrape: the scheduler's dictionaries are only
safe to read there, while rendering the text can then happen in a worker thread.

Every ``Metrics`` has its own ``CollectorRegistry``, so tests and a daemon never share figures.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pipeline import __version__
from pipeline.events import (
    Event,
    RunFinished,
    RunQueued,
    RunSkipped,
    RunStarted,
    StepFinished,
    StepRetrying,
    StepStarted,
)
from pipeline.model import RunStatus
from pipeline.policy import AUTOMATIC

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The ``*_created`` series (when each labelled series first appeared) would double the output
# for a thousand jobs and tell an operator nothing. This is a process-wide switch of
# prometheus-client; pipeline is its only user in the daemon.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Runs last from milliseconds (a `true`) to hours (a backup); lateness is milliseconds normally,
# seconds under load, and a whole jitter window for jobs that ask for one.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
                    3600.0, 7200.0, 21600.0, math.inf)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, math.inf)


@dataclass(frozen=True)
class Snapshot:
    """The daemon's live state at one instant, as the gauges show it."""

    jobs: int = 0
    active: Mapping[str, int] = field(default_factory=dict)  # job -> runs running now
    queued: Mapping[str, int] = field(default_factory=dict)  # job -> runs waiting their turn
    circuits_open: frozenset[str] = frozenset()
    next_fire: Mapping[str, float] = field(default_factory=dict)  # job -> Unix time
    invalid_files: int = 0
    journal_healthy: bool = True
    started_at: float | None = None
    # name -> (alive, active runs, heartbeat age in seconds, jobs directory matches)
    nodes: Mapping[str, tuple[bool, int, float, bool | None]] = field(default_factory=dict)
    pools: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # slots, used, waiting


@dataclass
class _Run:
    job: str
    fire_time: datetime | None  # of a scheduled fire (a trigger's has no lateness to tell)
    started_at: datetime | None = None


def _base_step(step_id: str) -> str:
    # A for_each instance ("build.3") counts under its step: one series per declared step.
    return step_id.split(".", 1)[0]


class _Histograms(Collector):
    """A histogram by label values, each series a plain list of bucket counts and its sum.

    prometheus-client's ``Histogram`` makes a child of 17 locked values for each label set on
    its first observation: for 1,000 jobs firing for the first time that is 62 ms of the trio
    thread (15 % of it in a burst of 1,000 fires) and 7.7 MiB for the two per-job histograms
    (BENCHMARKS.md, "Profile"). The text it renders is the same. Observed in the trio thread;
    a scrape renders a copy of the series in a worker thread.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        assert buckets[-1] == math.inf
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.bounds = list(buckets)
        self.les = [floatToGoString(b) for b in buckets]  # type: ignore[no-untyped-call]
        self.series: dict[tuple[str, ...], list[float]] = {}  # its buckets' counts, then the sum

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0.0] * (len(self.bounds) + 1)
        counts[bisect.bisect_left(self.bounds, value)] += 1.0  # `le`: a bound counts its own
        counts[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, counts in [(k, v.copy()) for k, v in list(self.series.items())]:
            cumulative = itertools.accumulate(counts[:-1])
            family.add_metric(list(labels), list(zip(self.les, cumulative, strict=True)),
                              counts[-1])
        yield family


class _LiveCollector(Collector):
    """Gauges read from the latest ``Snapshot`` at each scrape."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        yield _gauge("pipeline_jobs", "Jobs loaded and scheduled.", s.jobs)
        yield _gauge("pipeline_job_files_invalid", "Job files that fail validation.",
                     s.invalid_files)
        yield _gauge("pipeline_circuit_breakers_open", "Jobs whose circuit breaker is open.",
                     len(s.circuits_open))
        yield _gauge("pipeline_journal_healthy",
                     "1 while the state store accepts writes, 0 while commits fail.",
                     1 if s.journal_healthy else 0)
        yield _gauge("pipeline_runs_active_total", "Runs running now, all jobs together.",
                     sum(s.active.values()))
        yield _gauge("pipeline_runs_queued_total", "Runs waiting for their turn, all jobs.",
                     sum(s.queued.values()))
        yield _by_job("pipeline_runs_active", "Runs running now.", s.active)
        yield _by_job("pipeline_runs_queued", "Runs waiting for their turn (concurrency: queue).",
                      s.queued)
        yield _by_job("pipeline_circuit_open", "1 while the job's circuit breaker is open.",
                      {name: 1 for name in s.circuits_open})
        yield _by_job("pipeline_next_fire_timestamp_seconds",
                      "When the job fires next (Unix time).", s.next_fire)
        if s.started_at is not None:
            yield _gauge("pipeline_start_time_seconds", "When the daemon started (Unix time).",
                         s.started_at)
        if s.pools:
            family = GaugeMetricFamily("pipeline_pool_slots", "Slots of each pool (`*`: the "
                                       "cap on active runs) by state: total, used, free, "
                                       "waiting (runs and steps waiting for them).",
                                       labels=["pool", "state"])
            for pool, (slots, used, waiting) in sorted(s.pools.items()):
                for state, value in (("total", slots), ("used", used),
                                     ("free", max(slots - used, 0)), ("waiting", waiting)):
                    family.add_metric([pool, state], float(value))
            yield family
        if s.nodes:
            yield _gauge("pipeline_nodes_alive", "Nodes of the store whose lease is alive.",
                         sum(1 for alive, *_ in s.nodes.values() if alive))
            families = (
                ("pipeline_node_up", "1 while the node's lease is alive.", 0),
                ("pipeline_node_active_runs", "Runs the node runs now.", 1),
                ("pipeline_node_heartbeat_age_seconds", "Seconds since the node's last "
                 "heartbeat.", 2),
                ("pipeline_node_jobs_match", "1 if the node's jobs directory matches what the "
                 "other schedulers loaded, 0 if it differs (absent: not a scheduler).", 3))
            for name, documentation, index in families:
                family = GaugeMetricFamily(name, documentation, labels=["node"])
                for node, values in sorted(s.nodes.items()):
                    shown = values[index]
                    if shown is not None:
                        family.add_metric([node], float(shown))
                yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_job(name: str, documentation: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["job"])
    for job, value in sorted(values.items()):
        family.add_metric([job], value)
    return family


class Metrics:
    """Prometheus figures of one daemon, fed by every event the journal writes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("pipeline_runs", "Runs that ended, by job and final status "
                            "(skipped fires included).", ["job", "status"], registry=r)
        self.steps = Counter("pipeline_steps", "Steps that ended, by job and status.",
                             ["job", "status"], registry=r)
        self.retries = Counter("pipeline_step_retries", "Step attempts that failed and were "
                               "retried.", ["job"], registry=r)
        self.run_duration = _Histograms(
            "pipeline_run_duration_seconds", "Run duration, from start to end.", ["job"],
            DURATION_BUCKETS)
        r.register(self.run_duration)
        self.step_duration = _Histograms(
            "pipeline_step_duration_seconds", "Step duration (its last attempt).",
            ["job", "step"], DURATION_BUCKETS)
        r.register(self.step_duration)
        self.lateness = Histogram(
            "pipeline_fire_lateness_seconds", "How late a scheduled run started after its "
            "fire time (jitter included).", buckets=LATENESS_BUCKETS, registry=r)
        self.fires = Counter(
            "pipeline_fires", "The scheduler's decisions about fires and triggers, by job, "
            "outcome (fired, skipped, not made) and reason.", ["job", "outcome", "reason"],
            registry=r)
        self.deadlines_missed = Counter(
            "pipeline_deadline_missed", "Fires whose run had not succeeded by its deadline.",
            ["job"], registry=r)
        self.notifications = Counter(
            "pipeline_notifications", "Notifications by job, event and outcome (delivered, "
            "failed, suppressed, dropped).", ["job", "event", "status"], registry=r)
        self.last_success = Gauge(
            "pipeline_last_success_timestamp_seconds",
            "When the job's last succeeded run finished (Unix time).", ["job"], registry=r)
        info = Gauge("pipeline_info", "The running pipeline's version.", ["version"],
                     registry=r)
        info.labels(__version__).set(1)
        self._live = _LiveCollector()
        r.register(self._live)
        self._runs: dict[str, _Run] = {}
        self._steps: dict[str, dict[str, datetime]] = {}  # run -> step -> started
        self._seeded: set[str] = set()  # jobs whose last success was read from the store
        self._succeeded: set[str] = set()  # jobs with a success seen here, newer than the store
        self.events = 0  # events observed: a cheap "has anything happened" for caches

    # -- events ------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Called synchronously for every event, before it is committed."""
        self.events += 1
        if isinstance(event, RunQueued):
            self._runs[event.run_id] = _Run(
                event.job, event.fire_time if event.trigger in AUTOMATIC else None)
        elif isinstance(event, RunStarted):
            run = self._runs.get(event.run_id)
            if run is None:
                return
            if run.started_at is not None:
                return  # its start was decided (and its lateness observed) already
            run.started_at = event.started_at
            if run.fire_time is not None:
                late = (event.started_at - run.fire_time).total_seconds()
                self.lateness.observe(max(late, 0.0))
        elif isinstance(event, RunFinished):
            self._run_finished(event)
        elif isinstance(event, RunSkipped):
            # A queued run that was dropped ends as skipped too: forget it.
            self._runs.pop(event.run_id, None)
            self.runs.labels(event.job, str(RunStatus.SKIPPED)).inc()
        elif isinstance(event, StepStarted):
            self._steps.setdefault(event.run_id, {})[event.step_id] = event.started_at
        elif isinstance(event, StepRetrying):
            run = self._runs.get(event.run_id)
            if run is not None:
                self.retries.labels(run.job).inc()
        elif isinstance(event, StepFinished):
            started = (self._steps.get(event.run_id, {}).pop(event.step_id, None)
                       or event.started_at)
            run = self._runs.get(event.run_id)
            if run is None:
                return
            self.steps.labels(run.job, str(event.status)).inc()
            if started is not None:
                self.step_duration.observe((run.job, _base_step(event.step_id)),
                                           max((event.finished_at - started).total_seconds(), 0.0))

    def _run_finished(self, event: RunFinished) -> None:
        run = self._runs.pop(event.run_id, None)
        if run is None:
            return  # queued before this daemon started: nothing to attribute it to
        self.runs.labels(run.job, str(event.status)).inc()
        if run.started_at is not None:
            self.run_duration.observe(
                (run.job,), max((event.finished_at - run.started_at).total_seconds(), 0.0))
        if event.status is RunStatus.SUCCEEDED:
            self._succeeded.add(run.job)
            self.last_success.labels(run.job).set(event.finished_at.timestamp())
        self._steps.pop(event.run_id, None)

    def decided(self, job: str, outcome: str, reason: str | None, *,
                run_id: str | None = None, fire_time: datetime | None = None,
                at: datetime | None = None, automatic: bool = False) -> None:
        """A decision of the store's about a fire or a trigger (``pipeline why`` reads the
        same): counted; a run that starts is followed from here, and for a scheduled fire its
        lateness (the decision's time minus the fire's) observed."""
        self.fires.labels(job, outcome, reason or "").inc()
        if run_id is None:
            return
        if outcome == "fired":
            run = self._runs.setdefault(run_id, _Run(job, fire_time if automatic else None))
            if at is not None and run.started_at is None:
                run.started_at = at
                if automatic and fire_time is not None:
                    self.lateness.observe(max((at - fire_time).total_seconds(), 0.0))
        elif outcome == "skipped":
            self._runs.pop(run_id, None)
            self.runs.labels(job, str(RunStatus.SKIPPED)).inc()

    def not_made(self, decisions: Iterable[Any]) -> None:
        """Fires the scheduler made no run of (``StoredDecision``s)."""
        for d in decisions:
            self.fires.labels(d.job, str(d.outcome), d.reason or "").inc()

    # -- state that events do not carry ------------------------------------------------------

    def seed_last_success(self, job: str, finished_at: datetime | None) -> None:
        """Set the job's last success from the store, once, unless a run already set it."""
        if job in self._seeded:
            return
        self._seeded.add(job)
        if finished_at is not None and job not in self._succeeded:
            self.last_success.labels(job).set(finished_at.timestamp())

    def needs_seed(self, jobs: Iterable[str]) -> list[str]:
        """The jobs whose last success has not been read from the store yet."""
        return [job for job in jobs if job not in self._seeded]

    def update(self, snapshot: Snapshot) -> None:
        """Replace the live gauges' figures (call from the thread that owns the state)."""
        self._live.snapshot = snapshot

    # -- output ------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Everything in the Prometheus text format (``CONTENT_TYPE``); thread-safe."""
        return generate_latest(self.registry)

    def as_json(self) -> dict[str, Any]:
        """The same figures as ``render``, as JSON-ready data: one entry per metric family."""
        return {"metrics": list(self._families())}

    def _families(self) -> Iterator[dict[str, Any]]:
        for family in self.registry.collect():
            yield {
                "name": family.name, "type": family.type, "help": family.documentation,
                "samples": [{"name": s.name, "labels": dict(s.labels),
                             "value": _json_number(s.value)} for s in family.samples],
            }


def _json_number(value: float) -> float | str | None:
    # JSON has no infinities or NaN; Prometheus spells them like this.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value

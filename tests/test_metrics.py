"""Metrics fed with event records, read back through prometheus-client's own parser."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.events import (
    RunFinished,
    RunQueued,
    RunSkipped,
    RunStarted,
    StepFinished,
    StepRetrying,
    StepStarted,
)
from pipeline.metrics import Metrics, Snapshot
from pipeline.model import RunStatus, StepStatus, Trigger

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def parsed(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def a_run(metrics: Metrics, run_id: str, job: str, status: RunStatus, *, fire: float | None,
          start: float, end: float, steps: dict[str, tuple[StepStatus, float, float]]) -> None:
    metrics.observe(RunQueued(run_id, job, Trigger.SCHEDULE if fire is not None
                              else Trigger.API, at(start - 0.5),
                              fire_time=None if fire is None else at(fire)))
    metrics.observe(RunStarted(run_id, at(start)))
    for step, (step_status, begin, finish) in steps.items():
        metrics.observe(StepStarted(run_id, step, 1, at(begin), f"logs/{job}/{run_id}/x.log"))
        metrics.observe(StepFinished(run_id, step, step_status, at(finish), attempt=1))
    metrics.observe(RunFinished(run_id, status, at(end)))


def test_runs_steps_durations_lateness_and_last_success() -> None:
    metrics = Metrics()
    a_run(metrics, "r1", "backup", RunStatus.SUCCEEDED, fire=0.0, start=0.004, end=12.0,
          steps={"dump": (StepStatus.SUCCEEDED, 0.01, 10.0),
                 "gzip.0": (StepStatus.SUCCEEDED, 10.0, 11.0),
                 "gzip.1": (StepStatus.SUCCEEDED, 10.0, 11.5)})
    a_run(metrics, "r2", "backup", RunStatus.FAILED, fire=60.0, start=60.3, end=61.0,
          steps={"dump": (StepStatus.FAILED, 60.3, 61.0)})
    a_run(metrics, "r3", "report", RunStatus.SUCCEEDED, fire=None, start=5.0, end=6.0,
          steps={})
    metrics.observe(RunSkipped("r4", "backup", Trigger.SCHEDULE, at(120), at(120),
                               "circuit open"))
    metrics.observe(StepRetrying("r2", "dump", 1, 5.0))  # after the run: attributed nowhere
    found = parsed(metrics)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value("pipeline_runs_total", job="backup", status="succeeded") == 1
    assert value("pipeline_runs_total", job="backup", status="failed") == 1
    assert value("pipeline_runs_total", job="backup", status="skipped") == 1
    assert value("pipeline_runs_total", job="report", status="succeeded") == 1
    assert value("pipeline_steps_total", job="backup", status="succeeded") == 3
    assert value("pipeline_step_duration_seconds_count", job="backup", step="gzip") == 2
    assert value("pipeline_step_duration_seconds_sum", job="backup", step="dump") == \
        pytest.approx((10.0 - 0.01) + (61.0 - 60.3))
    assert value("pipeline_run_duration_seconds_sum", job="backup") == \
        pytest.approx((12.0 - 0.004) + (61.0 - 60.3))
    # Lateness only for fired runs: 4 ms and 300 ms.
    assert value("pipeline_fire_lateness_seconds_count") == 2
    assert value("pipeline_fire_lateness_seconds_bucket", le="0.005") == 1
    assert value("pipeline_fire_lateness_seconds_bucket", le="0.5") == 2
    assert value("pipeline_last_success_timestamp_seconds", job="backup") == at(12).timestamp()
    assert value("pipeline_last_success_timestamp_seconds", job="report") == at(6).timestamp()
    assert not any(name.endswith("_created") for name, _ in found)


def test_last_success_seeded_from_the_store_unless_a_newer_run_set_it() -> None:
    metrics = Metrics()
    assert metrics.needs_seed(["a", "b", "c"]) == ["a", "b", "c"]
    a_run(metrics, "r1", "a", RunStatus.SUCCEEDED, fire=None, start=100, end=101, steps={})
    metrics.seed_last_success("a", at(5))  # older than what this daemon saw: ignored
    metrics.seed_last_success("b", at(7))
    metrics.seed_last_success("c", None)  # never succeeded: no series at all
    metrics.seed_last_success("b", at(9))  # seeded once only
    assert metrics.needs_seed(["a", "b", "c", "d"]) == ["d"]
    found = parsed(metrics)
    assert found[("pipeline_last_success_timestamp_seconds", (("job", "a"),))] == \
        at(101).timestamp()
    assert found[("pipeline_last_success_timestamp_seconds", (("job", "b"),))] == \
        at(7).timestamp()
    assert ("pipeline_last_success_timestamp_seconds", (("job", "c"),)) not in found


def test_live_gauges_come_from_the_snapshot() -> None:
    metrics = Metrics()
    found = parsed(metrics)
    assert found[("pipeline_jobs", ())] == 0 and found[("pipeline_journal_healthy", ())] == 1
    metrics.update(Snapshot(jobs=3, active={"a": 2}, queued={"a": 1, "b": 4},
                            circuits_open=frozenset({"b"}), next_fire={"a": 1e9},
                            invalid_files=2, journal_healthy=False, started_at=5.0))
    found = parsed(metrics)
    assert found[("pipeline_jobs", ())] == 3
    assert found[("pipeline_runs_active", (("job", "a"),))] == 2
    assert found[("pipeline_runs_active_total", ())] == 2
    assert found[("pipeline_runs_queued", (("job", "b"),))] == 4
    assert found[("pipeline_runs_queued_total", ())] == 5
    assert found[("pipeline_circuit_open", (("job", "b"),))] == 1
    assert found[("pipeline_circuit_breakers_open", ())] == 1
    assert found[("pipeline_job_files_invalid", ())] == 2
    assert found[("pipeline_next_fire_timestamp_seconds", (("job", "a"),))] == 1e9
    assert found[("pipeline_journal_healthy", ())] == 0
    assert found[("pipeline_start_time_seconds", ())] == 5.0


def test_json_has_the_same_figures_and_instances_are_independent() -> None:
    one, other = Metrics(), Metrics()
    a_run(one, "r1", "a", RunStatus.SUCCEEDED, fire=0.0, start=1.0, end=2.0, steps={})
    document = json.loads(json.dumps(one.as_json(), allow_nan=False))
    families = {f["name"]: f for f in document["metrics"]}
    runs = families["pipeline_runs"]
    assert runs["type"] == "counter" and runs["help"]
    assert {"name": "pipeline_runs_total", "labels": {"job": "a", "status": "succeeded"},
            "value": 1.0} in runs["samples"]
    buckets = [s for s in families["pipeline_fire_lateness_seconds"]["samples"]
               if s["labels"].get("le") == "+Inf"]
    assert buckets[0]["value"] == 1.0
    text_names = {f.name for f in text_string_to_metric_families(one.render().decode())}
    assert text_names == set(families)
    assert ("pipeline_runs_total", (("job", "a"), ("status", "succeeded"))) not in parsed(other)


def test_decisions_count_fires_by_outcome_and_reason_and_time_a_fired_run() -> None:
    from pipeline.store.records import Outcome, StoredDecision

    metrics = Metrics()
    metrics.decided("backup", "fired", None, run_id="r1", fire_time=at(0), at=at(0.02),
                    automatic=True)
    metrics.decided("backup", "skipped", "overlap", run_id="r2", fire_time=at(60),
                    at=at(60), automatic=True)
    metrics.decided("backup", "fired", None, run_id="r3", fire_time=at(70), at=at(75))
    metrics.not_made([StoredDecision("backup", Outcome.NOT_MADE, at(130), at(120),
                                     reason="paused")])
    metrics.observe(RunStarted("r1", at(0.03)))  # the engine's own start: not counted again
    found = parsed(metrics)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value("pipeline_fires_total", job="backup", outcome="fired", reason="") == 2
    assert value("pipeline_fires_total", job="backup", outcome="skipped",
                 reason="overlap") == 1
    assert value("pipeline_fires_total", job="backup", outcome="not made",
                 reason="paused") == 1
    assert value("pipeline_runs_total", job="backup", status="skipped") == 1
    assert value("pipeline_fire_lateness_seconds_count") == 1  # only the scheduled one
    assert value("pipeline_fire_lateness_seconds_sum") == pytest.approx(0.02)


def test_the_plain_histograms_render_what_prometheus_clients_histogram_renders() -> None:
    """The per-job duration histograms are plain lists (a Histogram child per job cost the
    first fire of 1,000 jobs 62 ms and 7.7 MiB): their text must be prometheus-client's."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from pipeline.metrics import DURATION_BUCKETS, _Histograms

    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("t_seconds", "A duration.", ["job", "step"], buckets=DURATION_BUCKETS,
                       registry=theirs_registry)
    ours = _Histograms("t_seconds", "A duration.", ["job", "step"], DURATION_BUCKETS)
    ours_registry.register(ours)
    assert generate_latest(ours_registry) == generate_latest(theirs_registry)  # none yet
    # On a bound, between bounds, past the last finite one, zero; a second series after.
    for job, step, value in [("b", "x", 0.01), ("b", "x", 0.02), ("a", "y", 0.0),
                             ("b", "x", 7200.0), ("b", "x", 1e9), ("a", "y", 3.25),
                             ('q"uote', "z\\", 0.5)]:
        theirs.labels(job, step).observe(value)
        ours.observe((job, step), value)
    assert generate_latest(ours_registry).decode() == generate_latest(theirs_registry).decode()

"""Keeps bin/bench from rotting: its smallest piece, once, with no timing asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.bench import dags, filewatch
from tests.bench.harness import Children, Row, Stats, markdown_table, run_timed, text_table

PIPELINE = Path(sys.executable).with_name("pipeline")


@pytest.mark.slow
def test_bare_runner_and_pipeline_run_the_same_dag(tmp_path: Path) -> None:
    job, _ = dags.write_dag(tmp_path, "fanout", 5)
    children = Children()
    try:
        bare = run_timed(children, dags.bare_argv(job), log=tmp_path / "bare.log")
        ours = run_timed(children, [PIPELINE, "run", job, "--state-dir", tmp_path / "state"],
                         log=tmp_path / "pipeline.log")
    finally:
        children.close()
    assert bare.status == ours.status == 0
    assert (tmp_path / "state" / "state.db").exists()


def test_the_table_shows_ratios_and_targets() -> None:
    base = Stats((0.2, 0.3, 0.25))
    rows = [Row("bare", "s", base, target="baseline"),
            Row("ours", "s", Stats((0.5, 0.6, 0.55)), "bare", base, "≤ 1.25× bare", False)]
    assert "2.20×" in text_table(rows)
    assert "| ours | 0.550 s | 0.500 s – 0.600 s | 3 | bare |" in markdown_table(rows)
    assert "**NO**" in markdown_table(rows)


@pytest.mark.slow
def test_dropped_files_each_fire_once(tmp_path: Path) -> None:
    dropped = filewatch.drop_and_watch(tmp_path / "drop", 300, settle=0.2, timeout=60)
    assert (dropped.fired, dropped.handed) == (300, 300)
    assert dropped.batches >= 1 and dropped.seconds >= 0.2


def test_the_pages_benchmark_seeds_through_the_store(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from pipeline.store.sqlite import SqliteStore
    from tests.bench import pages

    now = datetime.now(UTC)
    assert pages.seed(tmp_path, now, jobs=3, per_job=20) == 60
    run_id = pages.sample_run(tmp_path, now)
    store = SqliteStore.open(tmp_path)
    try:
        assert store.count_runs() == 61 and len(store.last_runs()) == 3 + 1  # + job-00500
        record = store.run(run_id)
    finally:
        store.close()
    assert record is not None and [(s.id, s.attempt) for s in record.steps] == [
        ("prepare", 1), ("work_0", 3), ("work_1", 1)]
    assert all((tmp_path / s.log).stat().st_size > 30_000 for s in record.steps if s.log)

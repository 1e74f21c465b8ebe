"""Keeps bin/bench from rotting: its smallest pieces, once, with no timing asserted."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench import cluster, dags, filewatch, probes, profile, steps
from tests.bench.cron import Burst, crontab
from tests.bench.gen_jobs import write_jobs
from tests.bench.harness import (
    Children,
    Context,
    Row,
    Stats,
    markdown_table,
    run_timed,
    text_table,
)

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


def test_a_burst_counts_a_step_that_never_started_as_infinitely_late() -> None:
    found = steps.burst_figures("x", [[100.0, 200.0]], jobs=3)
    assert found.missing == 1
    assert found.p50 == (0.2,)
    assert math.isinf(found.last[0])


def test_the_crontab_fires_each_command_once_on_its_minute(tmp_path: Path) -> None:
    minute = 1796591040  # 2026-12-06T21:04:00Z
    text = crontab(Burst(minute, 2, steps.command(tmp_path / "marks"), tmp_path / "marks"))
    lines = text.splitlines()
    assert "PIPELINE_FIRE_TIME=2026-12-06T21:04:00+00:00" in lines
    jobs = [line for line in lines if " root " in line]
    assert len(jobs) == 2
    assert "date +\\%s.\\%N" in jobs[0]  # % ends a crontab command unless escaped


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    (tmp_path / "logs").mkdir()
    context = Context(quick=True, tmp=tmp_path, children=Children(), peers=False)
    try:
        yield context
    finally:
        context.children.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_steps_at_a_few_jobs(ctx: Context) -> None:
    rows = steps.real(ctx, jobs=3, seconds=2, aps=False, cron=False)
    by_name = {row.benchmark: row for row in rows}
    ours = by_name["real steps, 3 jobs/s, step start p99: pipeline serve"]
    bare = by_name["real steps, 3 jobs/s, step start p99: bare trio loop"]
    # Every fire in the window started, and a step cannot start before its fire.
    assert ours.met is not None and ours.note == ""
    assert 0 < bare.stats.median < math.inf and 0 < ours.stats.median < math.inf


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_burst_of_a_few_jobs(ctx: Context) -> None:
    rows = steps.burst(ctx, jobs=5, reps=1, cron=False, margin=8)
    last = {row.benchmark: row for row in rows}
    ours = last["burst, 5 jobs at one instant, last step start: pipeline serve"]
    assert ours.note == ""  # every step started
    assert 0 < ours.stats.median < 10
    cpu = ctx.memo["burst-5-pipeline"].cpu_ms
    assert len(cpu) == 1 and cpu[0] > 0


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


def test_hand_overs_are_read_between_turns_and_a_broken_pool_is_refused(
        tmp_path: Path) -> None:
    from tests.bench import pools
    from tests.bench.harness import BenchError

    marks = tmp_path / "marks"
    marks.write_text("start 10.000 a\nend 10.050 a\nstart 10.053 b\nend 10.103 b\n"
                     "start 10.110 c\nend 10.160 c\n")
    assert [round(g, 3) for g in pools.handovers(marks, 3)] == [3.0, 7.0]
    marks.write_text("start 10.000 a\nstart 10.010 b\nend 10.050 a\nend 10.060 b\n")
    with pytest.raises(BenchError, match="b started while a held"):
        pools.handovers(marks, 2)
    with pytest.raises(BenchError, match="4 marks"):
        pools.handovers(marks, 3)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_pool_hands_its_slot_over_in_pipeline_and_in_the_bare_loop(ctx: Context) -> None:
    from tests.bench import pools

    bare = pools.bare_once(ctx, 4, 0)
    for place in pools.PLACES:
        ours = pools.pipeline_once(ctx, 4, place, 0)
        assert len(ours.gaps) == 3 and all(g > 0 for g in ours.gaps) and ours.cpu
    assert len(bare.gaps) == 3 and all(g > 0 for g in bare.gaps)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_files_dropped_into_a_daemon_fire_one_run_each(ctx: Context) -> None:
    arrived = filewatch.drop_into_daemon(ctx, ctx.tmp / "files", 20, settle=0.2)
    assert arrived.runs == 20 and arrived.seconds >= 0.2 and arrived.cpu > 0


def test_a_group_run_alone_replaces_or_adds_its_section() -> None:
    from tests.bench import report

    full = ("# Benchmarks\n\n### Real\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n"
            "### Pages\n\nwords\n\n| a |\n| --- |\n\nA ratio is the row's median...\n\n"
            "## Details\n")
    rows = [Row("hand-over", "ms", Stats((1.0, 2.0)), target="baseline")]
    machine = {"date": "2026-12-07 00:00 UTC", "pipeline": "commit abc"}

    def text(group: str, title: str, date: str = "2026-12-07 00:00 UTC") -> str:
        return report.section(group, title, rows, machine={**machine, "date": date},
                              command_line=f"bin/bench --only {group} --update", took=60,
                              load=("0.5", "0.7"), details=["**It** — how."],
                              commands=["bin/pipeline serve"])

    # A group the report has no section of goes before the next one it has...
    added = report.splice(full, "pools", "Pools", text("pools", "Pools"), ["Pages"])
    assert added.index("### Real") < added.index("### Pools") < added.index("### Pages")
    assert "Measured on its own by `bin/bench --only pools --update` on 2026-12-07" in added
    assert "- **It** — how." in added and "| hand-over | 1.50 ms |" in added
    # ... and the next such run replaces it, nothing else.
    again = report.splice(added, "pools", "Pools", text("pools", "Pools", "2026-12-08"),
                          ["Pages"])
    assert again.count("### Pools") == 1 and "2026-12-08" in again and "2026-12-07" not in again
    assert again.replace(text("pools", "Pools", "2026-12-08"), "") == \
        added.replace(text("pools", "Pools"), "")
    # A section a full run wrote is replaced from its heading to the end of its table.
    real = report.splice(full, "real", "Real", text("real", "Real"), ["Pages"])
    assert "| 1 | 2 |" not in real and real.count("### Real") == 1
    assert real.index("### Real") < real.index("### Pages")
    # Nothing after it: before the words that follow the tables.
    last = report.splice(full, "torture", "Torture", text("torture", "Torture"), [])
    assert last.index("### Torture") < last.index("A ratio is") < last.index("## Details")


def test_cluster_statements_per_fire_split_the_firing_path_from_the_background() -> None:
    """pg_stat_statements' counts: the nodes' background (leases...) apart, the benchmark's
    own left out, a BEGIN riding with the clock read that follows it."""
    found = cluster._statements([
        ("BEGIN", 100), ("SELECT clock_timestamp()", 100),
        ("INSERT INTO runs (id, job) VALUES ($1, $2)", 100),
        ("UPDATE nodes SET heartbeat_at = $1 WHERE id = $2", 30),
        ("SELECT pg_stat_statements_reset()", 1)], 100, 110)
    assert (found.total, found.firing, found.trips, found.transactions) == (330, 300, 230, 110)
    assert [(q.split()[0], f) for q, _, f in found.top] == [
        ("BEGIN", True), ("SELECT", True), ("INSERT", True), ("UPDATE", False)]


@pytest.mark.slow
def test_profile_probes_measure_a_small_run_validation_and_daemon(tmp_path: Path) -> None:
    """The probes ``python -m tests.bench.profile`` builds its start-up, validate and memory
    summaries from, on a few jobs: each still finds what it wraps or patches in the product."""
    job, _ = dags.write_dag(tmp_path, "fanout", 3)
    imported = profile.probe("imports", "import pipeline.cli; pipeline.cli.main(['run', "
                             f"{str(job)!r}, '--state-dir', {str(tmp_path / 'a')!r}])")
    assert imported["dataclasses"] > 0 and "pipeline.engine" in imported["own"]
    assert any("`trio`" in line for line in profile.import_tables([imported]))
    parts = profile.probe("run", job, tmp_path / "b")
    assert all(parts[label][2] >= 1 for label in probes.LABELS)
    bare = profile.probe("bare", job)
    assert "\n".join(profile.parts_table([parts], [bare])).count("|") > 30
    write_jobs(tmp_path / "jobs", 3)
    stages = profile.probe("validate", tmp_path / "jobs")
    assert stages["files"] == 3 and len(stages["stages"]) == 7
    held = profile.probe("jobs", tmp_path / "jobs")
    # One object per distinct key: yamlsafe interns them (there were copies before).
    assert held["jobs"] == 3 and held["key_distinct"] == held["key_strings"] > 0
    settled = profile.probe("daemon", tmp_path / "jobs", tmp_path / "state",
                            ",".join(probes.WHAT_IF), "0.5")
    assert settled["VmRSS"] > 0 and settled["arenas"] > 0

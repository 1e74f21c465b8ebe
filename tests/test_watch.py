"""The watched jobs directory: names, last good versions, symlinks, and the watcher itself.

Real files in tmp_path, a real SQLite store: a catalog made again on the same store is what a
daemon restart sees.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import trio

from pipeline.store.sqlite import SqliteStore
from pipeline.watch import Catalog, watch_jobs

JOB = """
name: {name}
schedule: every 10s
steps:
  - {{id: s, run: echo {word}}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def catalog(jobs: Path, store: SqliteStore | None) -> Catalog:
    found = Catalog(jobs, store=store)
    found.scan()
    return found


def test_a_new_file_never_takes_over_a_name_while_running(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "child.yaml", JOB.format(name="child", word="original"))
    store = SqliteStore.open(tmp_path / "state")
    running = catalog(jobs, store)
    assert running.files == {str(jobs / "child.yaml"): "child"}
    # Sorts before child.yaml: alphabetical order must not decide.
    write(jobs / "a-impostor.yaml", JOB.format(name="child", word="impostor"))
    assert running.scan()
    assert running.files == {str(jobs / "child.yaml"): "child"}
    assert "original" in running.jobs["child"].steps[0].run  # type: ignore[operator]
    [problem] = running.problems[str(jobs / "a-impostor.yaml")]
    assert problem.line == 2 and "already used by" in problem.message
    assert str(jobs / "child.yaml") in problem.message
    assert str(jobs / "child.yaml") not in running.problems


def test_the_holder_keeps_its_name_across_a_restart(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "child.yaml", JOB.format(name="child", word="original"))
    store = SqliteStore.open(tmp_path / "state")
    catalog(jobs, store)
    write(jobs / "a-impostor.yaml", JOB.format(name="child", word="impostor"))
    restarted = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert restarted.files == {str(jobs / "child.yaml"): "child"}
    assert str(jobs / "a-impostor.yaml") in restarted.problems


def test_without_history_the_first_file_in_path_order_wins(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "b.yaml", JOB.format(name="same", word="b"))
    write(jobs / "a.yaml", JOB.format(name="same", word="a"))
    found = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert found.files == {str(jobs / "a.yaml"): "same"}


def test_the_last_good_version_keeps_firing_across_a_restart(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    path = write(jobs / "st.yaml", JOB.format(name="st", word="good"))
    catalog(jobs, SqliteStore.open(tmp_path / "state"))
    path.write_text("name: st\nsteps: [oops\n")  # YAML that does not parse
    restarted = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert "good" in restarted.jobs["st"].steps[0].run  # type: ignore[operator]
    assert restarted.stale == {"st": str(path)}
    assert restarted.problems[str(path)]  # the file's errors are shown all the same
    # Fixed: the new version runs and becomes the one remembered.
    write(path, JOB.format(name="st", word="fixed"))
    assert restarted.scan()
    assert restarted.stale == {}
    again = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert "fixed" in again.jobs["st"].steps[0].run  # type: ignore[operator]


def test_a_removed_file_is_forgotten(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    path = write(jobs / "gone.yaml", JOB.format(name="gone", word="x"))
    store = SqliteStore.open(tmp_path / "state")
    running = catalog(jobs, store)
    path.unlink()
    assert running.scan()
    assert running.jobs == {}
    assert store.definitions() == {}
    # Another file may now take the name.
    write(jobs / "new.yaml", JOB.format(name="gone", word="y"))
    assert catalog(jobs, SqliteStore.open(tmp_path / "state")).files == {
        str(jobs / "new.yaml"): "gone"}


def test_definitions_are_kept_relative_to_the_jobs_directory(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "sub" / "x.yaml", JOB.format(name="x", word="x"))
    store = SqliteStore.open(tmp_path / "state")
    catalog(jobs, store)
    assert set(store.definitions()) == {os.path.join("sub", "x.yaml")}


def test_symlinked_folders_are_followed_each_real_folder_once(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    outside = tmp_path / "elsewhere"
    write(outside / "linked.yaml", JOB.format(name="linked", word="x"))
    jobs.mkdir()
    (jobs / "team").symlink_to(outside, target_is_directory=True)
    (jobs / "team-again").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(jobs, target_is_directory=True)  # a cycle ends
    found = catalog(jobs, None)
    assert list(found.jobs) == ["linked"]
    assert found.problems == {}


async def test_watch_jobs_reports_a_new_file(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    found = Catalog(jobs)
    found.scan()
    changed = trio.Event()

    async def on_change() -> None:
        changed.set()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_jobs(
            found, on_change, stop=stop, task_status=task_status))
        write(jobs / "new.yaml", JOB.format(name="new", word="x"))
        with trio.fail_after(10):
            await changed.wait()
        stop.set()
    assert list(found.jobs) == ["new"]


SETTINGS = """
kind: settings
pools: {{db: {slots}}}
"""
POOLED = """
name: p
pool: db
steps:
  - {id: s, run: "true"}
"""


def test_the_settings_files_last_good_version_stays_in_force_across_a_restart(
        tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    settings = write(jobs / "settings.yaml", SETTINGS.format(slots=3))
    write(jobs / "p.yaml", POOLED)
    first = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert dict(first.settings.pools) == {"db": 3} and "p" in first.jobs
    settings.write_text("kind: settings\npools: {db: [oops\n")  # broken while no daemon runs
    restarted = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert dict(restarted.settings.pools) == {"db": 3}  # the pool the job names still exists
    assert "p" in restarted.jobs and str(jobs / "p.yaml") not in restarted.problems
    assert restarted.problems[str(settings)]  # and the file's errors are shown
    # Fixed with another size: that becomes the version remembered.
    write(settings, SETTINGS.format(slots=5))
    assert restarted.scan()
    again = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert dict(again.settings.pools) == {"db": 5}
    # Removed: forgotten, so a broken one written later has nothing to fall back on.
    settings.unlink()
    assert again.scan() and dict(again.settings.pools) == {}
    settings.write_text("kind: settings\npools: {db: [oops\n")
    assert dict(catalog(jobs, SqliteStore.open(tmp_path / "state")).settings.pools) == {}


def test_a_remembered_settings_file_is_no_job(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "settings.yaml", SETTINGS.format(slots=1))
    write(jobs / "a.yaml", JOB.format(name="a", word="x"))
    store = SqliteStore.open(tmp_path / "state")
    catalog(jobs, store)
    assert {d.name for d in store.definitions().values()} == {"", "a"}
    restarted = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert set(restarted.jobs) == {"a"} and restarted.files == {str(jobs / "a.yaml"): "a"}


def test_a_settings_file_broken_while_running_is_shown_once_and_valid_again(
        tmp_path: Path) -> None:
    # A running daemon rescans every few seconds: the broken file's located error must reach
    # the catalog's problems (the API and the page show those) and the log once, not a bare
    # warning on every rescan.
    from loguru import logger

    jobs = tmp_path / "jobs"
    settings = write(jobs / "settings.yaml", SETTINGS.format(slots=3))
    write(jobs / "p.yaml", POOLED)
    running = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])),
                      level="INFO")
    try:
        settings.write_text("kind: settings\npools: {db: 0}\n")
        assert running.scan()
        [problem] = running.problems[str(settings)]
        assert (problem.line, problem.column) == (2, 13) and "pools.db" in problem.message
        assert dict(running.settings.pools) == {"db": 3} and "p" in running.jobs
        assert not running.scan() and not running.scan()  # nothing new: nothing said again
        assert [level for level, _ in lines] == ["ERROR", "WARNING"]
        assert "pools.db" in lines[0][1] and "stays in force" in lines[1][1]
        write(settings, SETTINGS.format(slots=3))
        assert running.scan()
        assert str(settings) not in running.problems
        assert lines[-1] == ("INFO", f"{settings}: valid again")
    finally:
        logger.remove(sink)


def test_a_last_good_version_recalled_after_a_restart_keeps_the_settings_defaults(
        tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "settings.yaml", "kind: settings\ndefaults: {timezone: Asia/Tokyo}\n")
    path = write(jobs / "st.yaml", JOB.format(name="st", word="good").replace(
        "every 10s", "{cron: '0 3 * * *'}"))
    first = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert str(first.jobs["st"].schedules[0].timezone) == "Asia/Tokyo"
    path.write_text("name: st\nsteps: [oops\n")
    restarted = catalog(jobs, SqliteStore.open(tmp_path / "state"))
    assert restarted.stale == {"st": str(path)}
    # The version that keeps firing is the one that fired before: 03:00 in Tokyo, not UTC.
    assert str(restarted.jobs["st"].schedules[0].timezone) == "Asia/Tokyo"


def test_what_checking_cached_is_dropped_after_a_scan_that_loaded_files(tmp_path: Path) -> None:
    """Loading 1,000 jobs leaves ~2 MiB of parsed strings in expr's caches: the daemon lets them
    go once its files are loaded (the memory benchmark's target is 80 MB)."""
    from pipeline import expr

    jobs = tmp_path / "jobs"
    write(jobs / "a.yaml", JOB.format(name="a", word="hello"))
    expr.references("${{ warm.the.cache }}")
    assert expr.references.cache_info().currsize > 0
    found = catalog(jobs, None)
    assert "a" in found.jobs
    assert expr.references.cache_info().currsize == 0
    # A scan that loads nothing (no file changed) leaves the caches alone.
    expr.references("${{ warm.the.cache }}")
    assert not found.scan()
    assert expr.references.cache_info().currsize == 1

"""Commands that operate jobs, with or without a daemon: pause, resume, reset, why,
backfill, rerun."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from pipeline import operate
from pipeline.cli import Settings, complete_job, complete_run, dirs, fail, pass_settings
from pipeline.cli.jobfiles import find_job, jobs_on_disk
from pipeline.cli.state import get_run, has_state, open_state
from pipeline.cli.text import echo_json, local, parse_time
from pipeline.errors import UsageError
from pipeline.model import Job, iso, utc_now
from pipeline.runrecords import RunRecord
from pipeline.store import Store
from pipeline.versions import version_of


def _operated(settings: Settings, store: Store, names: tuple[str, ...], every: bool,
              ) -> tuple[list[str], dict[str, Job]]:
    """The jobs a pause/resume names (``--all``: every job the files or the store know)."""
    loaded = jobs_on_disk(settings)
    # A broken file's last good version keeps firing: it is paused and caught up as any job.
    jobs = {**loaded.kept, **loaded.jobs} if loaded is not None else {}
    if every == bool(names):
        raise UsageError("name the jobs, or give --all (not both)")
    if every:
        return sorted(set(jobs) | set(store.job_states())), jobs
    return operate.known_jobs(store, [*jobs, *(loaded.files.values() if loaded else [])],
                              list(names)), jobs


@click.command()
@click.argument("jobs", nargs=-1, shell_complete=complete_job)
@click.option("--all", "every", is_flag=True, help="Pause every job.")
@click.option("--reason", metavar="TEXT", help="Why, for whoever looks later.")
@dirs
@pass_settings
def pause(settings: Settings, jobs: tuple[str, ...], every: bool, reason: str | None) -> None:
    """Stop firing JOB... on schedule (and on events) until resumed; manual runs still work.

    Recorded in the state with who, when and why; a running daemon (every node of a
    cluster) acts on it within a second.
    """
    with open_state(settings, create=True) as store:
        names, _ = _operated(settings, store, jobs, every)
        operate.pause(store, names, by=operate.operator(), reason=reason, now=utc_now())
    click.echo(f"paused {', '.join(names) or 'nothing'}")


@click.command()
@click.argument("jobs", nargs=-1, shell_complete=complete_job)
@click.option("--all", "every", is_flag=True, help="Resume every job.")
@click.option("--catchup", is_flag=True,
              help="Let each job's catchup policy run the fires it missed while paused "
                   "[default: they stay not made].")
@dirs
@pass_settings
def resume(settings: Settings, jobs: tuple[str, ...], every: bool, catchup: bool) -> None:
    """Fire JOB... again. Fires due while paused are not made, unless --catchup."""
    with open_state(settings, create=True) as store:
        names, loaded = _operated(settings, store, jobs, every)
        made = operate.resume(store, names, jobs=loaded, catchup=catchup, now=utc_now())
    click.echo(f"resumed {', '.join(names) or 'nothing'}"
               + (f"; caught up: {', '.join(made)}" if made else ""))


@click.command()
@click.argument("job", shell_complete=complete_job)
@dirs
@pass_settings
def reset(settings: Settings, job: str) -> None:
    """Close JOB's open circuit breaker: its failures so far no longer count."""
    with open_state(settings, create=True) as store:
        loaded = jobs_on_disk(settings)
        operate.known_jobs(store, list(loaded.files.values()) if loaded else [], [job])
        store.reset_circuit(job, utc_now())
    click.echo(f"circuit of {job} closed")


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.option("--at", "at", metavar="TIME",
              help="Explain the fires around this time (ISO 8601) [default: the latest].")
@click.option("-n", "count", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="How many decisions to show.")
@click.option("--since", metavar="TIME", help="Only decisions from this time.")
@click.option("--until", metavar="TIME", help="Only decisions up to this time.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def why(settings: Settings, job: str, at: str | None, count: int, since: str | None,
        until: str | None, as_json: bool) -> None:
    """Why JOB ran, or did not: the scheduler's decisions about its fires (made, skipped, not
    made, and why), whether a daemon was running, and why the next fire is when it is."""
    loaded = jobs_on_disk(settings)
    # The version a daemon fires: the file's, or the last good one of a file broken since.
    definition = loaded.scheduled(job) if loaded else None
    if definition is not None:  # its own file's errors, not those of a file that wants its name
        problems = [str(p) for p in loaded.problems.get(definition.file, ())] if loaded else []
    else:
        problems = [str(p) for f, n in (loaded.files.items() if loaded else []) if n == job
                    for p in loaded.problems.get(f, ())] if loaded else []
    zone = definition.schedules[0].timezone if definition and definition.schedules else None
    moment = parse_time(at, zone) if at else None
    start = parse_time(since, zone) if since else None
    end = parse_time(until, zone) if until else None
    if moment is not None:
        start = start or moment - timedelta(days=1)
        end = end or moment + timedelta(days=1)
    if not has_state(settings):
        if definition is None:
            fail(f"unknown job {job!r}")
        decisions, state, nodes, now = [], None, [], utc_now()
    else:
        with open_state(settings) as store:
            state = store.job_states().get(job)
            if definition is None and state is None and not problems:
                fail(f"unknown job {job!r} (no file names it and it has no history)")
            decisions = operate.decisions_near(store, job, moment, count, since=start,
                                               until=end) if moment is not None else \
                store.decisions(job, since=start, until=end, limit=count)
            nodes = store.nodes(since=(moment or utc_now()) - timedelta(days=30))
            now = store.now()
    lines = operate.explain(job, definition, decisions=decisions, state=state, nodes=nodes,
                            now=now, at=moment, problems=problems)
    if as_json:
        echo_json({"job": job, "decisions": [
            {"fire_time": iso(d.fire_time), "decided_at": iso(d.decided_at),
             "outcome": str(d.outcome), "reason": d.reason, "detail": d.detail,
             "run_id": d.run_id, "node": d.node} for d in decisions],
            "next": lines[-1], "lines": lines})
        return
    for line in lines:
        click.echo(line)


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.option("--from", "start", required=True, metavar="TIME",
              help="The first instant (ISO 8601, or a date; in the job's zone).")
@click.option("--to", "end", required=True, metavar="TIME", help="The last instant.")
@click.option("--rerun", type=click.Choice(["none", "failed", "all"]), default="none",
              show_default=True,
              help="Instants that already have a run: leave them, rerun the failed, or all.")
@click.option("--max-parallel", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="How many of the job's runs may run at once.")
@click.option("--dry-run", is_flag=True, help="List the instants and what would be run.")
@dirs
@pass_settings
def backfill(settings: Settings, job: str, start: str, end: str, rerun: str,
             max_parallel: int, dry_run: bool) -> None:
    """One run of JOB per scheduled instant in [--from, --to]: the job's own schedule,
    exclusions and zone; trigger `backfill`, `run.fire_time` = the instant.

    Through the daemon (any node) when one runs; in the foreground otherwise. An instant's
    run is never doubled: a backfilled instant that later comes due is not fired again.
    """
    definition = find_job(settings, job, missing_code=1)
    zone = definition.schedules[0].timezone if definition.schedules else None
    instants = operate.backfill_instants(definition, parse_time(start, zone),
                                         parse_time(end, zone))
    with open_state(settings, create=not dry_run) if (
            not dry_run or has_state(settings)) else nullcontext(None) as store:
        have = store.fired(job, since=instants[0], until=instants[-1]) \
            if store is not None and instants else {}
        if dry_run:
            for instant in instants:
                run = have.get(instant)
                what = "run" if run is None else (
                    f"has run {run.id} ({run.status})"
                    + ("; run again" if rerun == "all" or (
                        rerun == "failed" and run.status.finished
                        and run.status.value != "succeeded") else "; left alone"))
                click.echo(f"{local(instant, zone)}  {what}")
            click.echo(f"{len(instants)} instants", err=True)
            return
        assert store is not None
        made, left = operate.backfill(store, definition, instants, rerun=rerun,
                                      max_parallel=max_parallel, now=utc_now(),
                                      version=version_of(definition_path(definition)))
        for instant, run in left:
            click.echo(f"pipeline: {local(instant, zone)} has run {run.id} ({run.status}); "
                       "left alone", err=True)
        for run_id in made:
            click.echo(run_id)
        if made and not operate.runner_alive(store, definition):
            click.echo(f"pipeline: no daemon runs {job}: running {len(made)} run(s) here",
                       err=True)
            run_here(settings, store, made)


@click.command()
@click.argument("run_id", shell_complete=complete_run)
@click.option("--from", "from_step", metavar="STEP",
              help="Run STEP and what depends on it again; reuse the other steps' outputs.")
@click.option("--failed", is_flag=True,
              help="Run the failed, timed-out and cancelled steps and their dependants again.")
@dirs
@pass_settings
def rerun(settings: Settings, run_id: str, from_step: str | None, failed: bool) -> None:
    """A new run of RUN_ID's job with the same params and fire time (trigger `rerun`), from
    the current job file. Reused steps show `reused`, with their outputs."""
    if from_step and failed:
        raise UsageError("give --from STEP or --failed, not both")
    with open_state(settings) as store:
        record = get_run(store, run_id)
        definition = find_job(settings, record.job, missing_code=1)
        reuse = operate.rerun_reuse(definition, record, from_step=from_step, failed=failed)
        version = version_of(definition_path(definition))
        if record.version is not None and record.version.sha256 != version.sha256:
            click.echo(f"pipeline: {definition.file} changed since run {record.id}: the new "
                       "run uses the current file", err=True)
        new = operate.rerun(store, record, definition, reuse=reuse, now=utc_now(),
                            version=version)
        click.echo(new)
        if not operate.runner_alive(store, definition):
            [ended] = run_here(settings, store, [new])
            sys.exit(0 if ended.status.value == "succeeded" else 1)


def definition_path(job: Job) -> Any:
    return Path(job.file)


def run_here(settings: Settings, store: Store, run_ids: list[str]) -> list[RunRecord]:
    """Run queued runs in this process (no daemon would), saying how each ended."""
    # Only when no daemon runs them: pause, resume and the rest never load the engine.
    import trio

    from pipeline import foreground

    def ended(record: RunRecord) -> None:
        reason = f" ({record.reason})" if record.reason else ""
        click.echo(f"run {record.id} {record.status}{reason}", err=True)

    def jobs(name: str) -> Job | None:
        return find_job(settings, name, missing_code=1)

    return trio.run(lambda: foreground.run_queued(
        run_ids, store=store, state_dir=settings.state_dir, runners=settings.runners(),
        jobs=jobs, on_end=ended))

"""Commands about job files: validate, schema, graph, next, list."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline import dag, jobgraph, jobset, notation, schedule_words, triggers
from pipeline.cli import Settings, complete_job, dirs, fail, pass_settings
from pipeline.cli.jobfiles import find_job, jobs_on_disk, remembered
from pipeline.cli.text import echo_json, local, parse_time, table, zone_of
from pipeline.errors import Problem, UsageError
from pipeline.jobset import Loaded
from pipeline.model import CircuitBreaker, RunStatus, utc_now
from pipeline.policy import circuit_open
from pipeline.runrecords import RunRecord
from pipeline.schema import job_schema
from pipeline.views import job_row

if TYPE_CHECKING:
    from pipeline.store.records import JobState


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text",
              show_default=True, help="How to print the errors.")
@dirs
@pass_settings
def validate(settings: Settings, paths: tuple[str, ...], fmt: str) -> None:
    """Validate job files or directories (default: the jobs directory).

    Every error is printed as FILE:LINE:COL: error: MESSAGE, and every warning (an `at:` in
    the past, a lookup under `| default` that can never succeed...) as FILE:LINE:COL: warning:
    MESSAGE. Exit status 0 if all are valid (warnings or not), 1 if any is not. A `uses: job`
    step is checked against the jobs directory when a directory is validated; given only
    files, a call to a job outside them is not judged. A job name that two files want is
    held by the file that held it first, as the state directory remembers (without one, by
    the first file in path order).
    """
    targets = [Path(p) for p in paths] or [settings.jobs_dir]
    for target in targets:
        if not target.exists():
            raise click.BadParameter(f"{target} does not exist", param_hint="PATHS")
    known = remembered(settings)
    loaded = settings.needing_plugins(lambda: jobset.load_jobs(
        targets, runner_schemas=settings.runner_schemas(), remembered=known))
    files = sorted({*loaded.files, *loaded.problems, *loaded.warnings, *loaded.settings_files})
    problems = [p for f in files for p in loaded.problems.get(f, ())]
    # Per file, errors and warnings in the order they are written.
    found = [p for f in files for p in sorted(
        [*loaded.problems.get(f, ()), *loaded.warnings.get(f, ())],
        key=lambda p: (p.line, p.column))]
    if fmt == "json":
        echo_json({
            "valid": not problems,
            "files": [{"file": f, "job": loaded.files.get(f), "valid": f not in loaded.problems,
                       "errors": [p.as_dict() for p in loaded.problems.get(f, ())],
                       "warnings": [p.as_dict() for p in loaded.warnings.get(f, ())]}
                      for f in files],
        })
    elif fmt == "github":
        for p in found:
            message = p.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
            click.echo(f"::{p.severity} file={p.file},line={p.line},col={p.column}::{message}")
    else:
        for p in found:
            click.echo(str(p))
        bad = len(loaded.problems)
        warned = sum(len(w) for w in loaded.warnings.values())
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        summary = f"{count} checked, {bad} invalid" if bad else f"{count} valid"
        if warned:
            summary += f", {warned} warning{'s' if warned != 1 else ''}"
        click.echo(summary, err=True)
    sys.exit(1 if problems else 0)


@click.command()
@click.option("--runner", help="Print the schema of this runner's `with` instead.")
@pass_settings
def schema(settings: Settings, runner: str | None) -> None:
    """Print the job file's JSON Schema (or a runner's)."""
    settings.plugins = True

    if runner is None:
        echo_json(job_schema(settings.runner_schemas()))
        return
    registry = settings.runners()
    if runner not in registry:
        raise click.BadParameter(f"unknown runner {runner!r} (known: "
                                 f"{', '.join(sorted(registry))})", param_hint="--runner")
    echo_json(dict(registry[runner].schema))


@click.command()
@click.argument("job", required=False, shell_complete=complete_job)
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text",
              show_default=True)
@click.option("--jobs", "between_jobs", is_flag=True,
              help="Draw which jobs fire after which (`after:` schedules) across the jobs "
                   "directory; with JOB, the jobs it fires after and that fire after it.")
@click.option("--all", "every", is_flag=True,
              help="With --jobs: every job, also those no `after:` connects.")
@dirs
@pass_settings
def graph(settings: Settings, job: str | None, fmt: str, between_jobs: bool,
          every: bool) -> None:
    """Print a job's step DAG, or with --jobs the graph of which jobs fire after which.

    Edges of the job graph are labelled with the states of the upstream's run that fire
    the downstream (`schedule: {after: JOB, status: [...]}`). Without --all it shows the
    jobs that some `after:` connects; a job whose file is invalid shows as not loaded.
    """
    if not between_jobs:
        if job is None:
            raise UsageError("name a JOB, or give --jobs for the graph of the jobs directory")
        if every:
            raise UsageError("--all goes with --jobs")
        click.echo(dag.render(find_job(settings, job, missing_code=1), fmt))
        return
    loaded = jobs_on_disk(settings)
    if loaded is None:
        fail(f"the jobs directory {settings.jobs_dir} does not exist (give --jobs-dir or set "
             "PIPELINE_JOBS_DIR)", 2)
    edges = jobgraph.edges(loaded.jobs)
    known = set(loaded.jobs) | set(loaded.files.values())
    shown: Collection[str] = known if every else ()
    if job is not None:
        if every:
            raise UsageError("give JOB (the jobs around it) or --all (every job), not both")
        if job not in known:
            fail(f"unknown job {job!r} in {settings.jobs_dir} (jobs: "
                 f"{', '.join(sorted(known)) or 'none'})", 1)
        edges, shown = jobgraph.around(edges, job), [job]
    click.echo(jobgraph.render(edges, fmt, jobs=shown, loaded=loaded.jobs))
    if loaded.problems:
        count = len(loaded.problems)
        click.echo(f"pipeline: {count} invalid job file{'s' if count != 1 else ''} left out "
                   "(pipeline validate says why)", err=True)
    if not edges and job is None:
        click.echo(f"pipeline: no job in {settings.jobs_dir} fires after another"
                   + ("" if every else " (--all shows every job)"), err=True)


@click.command(name="next")
@click.argument("job", shell_complete=complete_job)
@click.option("-n", "count", type=click.IntRange(1, 10000), default=5, show_default=True)
@click.option("--after", "after", metavar="TIME", help="ISO 8601 time [default: now]")
@dirs
@pass_settings
def next_(settings: Settings, job: str, count: int, after: str | None) -> None:
    """Print the next N fire times of JOB (a name or a file), in the job's zone."""
    definition = find_job(settings, job, missing_code=1)
    zone = definition.schedules[0].timezone if definition.schedules else notation.local_zone()
    start = parse_time(after, zone) if after else utc_now()
    if not definition.schedules:
        click.echo(f"pipeline: job {definition.name} has no schedule; it runs only when "
                   "triggered", err=True)
        return
    if not definition.enabled:
        click.echo(f"pipeline: job {definition.name} is disabled (enabled: false); these are "
                   "the fires it would get", err=True)
    fires = triggers.next_fires(definition.schedules, start, count)
    # Events have no times to print: say what fires the job instead (on stderr, so that
    # stdout stays one time per line), or why it fires no more.
    note = schedule_words.next_note(definition.schedules, fires[0] if fires else None, start)
    if note is not None:
        click.echo(f"pipeline: job {definition.name}: {note.words}", err=True)
    for fire in fires:
        click.echo(fire.isoformat())


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def list_(settings: Settings, as_json: bool) -> None:
    """Every job in the jobs directory: schedule, next fire (in the job's zone), last status,
    circuit breaker, validity, and what a running daemon makes of it."""
    # Of these commands list alone reads the state: the others must not pay for the store.
    from pipeline.cli.state import daemon_info, has_state, open_state

    loaded = jobs_on_disk(settings)
    if loaded is None:
        fail(f"the jobs directory {settings.jobs_dir} does not exist (give --jobs-dir or set "
             "PIPELINE_JOBS_DIR)", 2)
    daemon = daemon_info(settings)
    last: Mapping[str, RunRecord] = {}
    active: Sequence[RunRecord] = []
    states: Mapping[str, JobState] = {}
    if has_state(settings):
        with open_state(settings) as store:
            last, active, states = store.last_runs(), store.active_runs(), store.job_states()
    now = utc_now()
    rows = list_rows(loaded, daemon, last=last, active=active, states=states, now=now)
    if as_json:
        echo_json(rows)
        return

    def validity(row: dict[str, Any]) -> str:
        if row["valid"]:
            return "valid"
        return f"INVALID ({len(row['errors'])})" + (", last good version runs"
                                                    if row["stale"] else "")

    def when(row: dict[str, Any]) -> str:
        job = loaded.scheduled(row["name"]) if row["name"] else None
        if not row["next_fire_time"]:
            note = schedule_words.next_note(job.schedules, None, now, enabled=job.enabled) \
                if job is not None else None
            return str(note.kind) if note is not None else "-"
        return local(datetime.fromisoformat(row["next_fire_time"]), zone_of(job))

    table([(r["name"] or "?", validity(r),
            (r["schedule"] or "-") + ("" if r["enabled"] in (True, None) else " [disabled]")
            + (" [paused]" if r["paused"] else ""),
            when(r), r["last_run"]["status"] if r["last_run"] else "-", r["circuit"] or "-",
            r["file"])
           for r in rows], ("JOB", "VALIDITY", "SCHEDULE", "NEXT FIRE", "LAST", "CIRCUIT",
                            "FILE"))
    for r in rows:
        for e in r["errors"]:
            click.echo(str(Problem(e["file"], e["line"], e["column"], e["message"])), err=True)
    if daemon is None:
        click.echo("(no daemon is running on this state directory)", err=True)


def list_rows(loaded: Loaded, daemon: Mapping[str, Any] | None, *,
              last: Mapping[str, RunRecord], active: Sequence[RunRecord],
              states: Mapping[str, JobState], now: datetime) -> list[dict[str, Any]]:
    """Each job file as the API shows it (``views.job_row``), and what the daemon makes of
    it: a file that no longer loads shows the version the daemon still runs (``stale``): the
    last good version the state keeps (``Loaded.kept``), else what a running daemon says."""
    running: Mapping[str, Any] = (daemon or {}).get("jobs", {})

    def where(info: Mapping[str, Any]) -> str:
        return os.path.abspath(str(info.get("path") or info.get("file")))

    # A file that the daemon loaded once may not even parse now: the daemon knows its name.
    named_by_daemon = {where(info): name for name, info in running.items() if info.get("file")}
    counts = Counter(r.job for r in active)
    queued = Counter(r.job for r in active if r.status is RunStatus.QUEUED)
    last_good = {job.file: job for job in loaded.kept.values()}
    rows: list[dict[str, Any]] = []
    for file in sorted({*loaded.files, *loaded.problems}):
        name = loaded.files.get(file) or named_by_daemon.get(os.path.abspath(file))
        job = loaded.jobs.get(name) if name and file not in loaded.problems \
            else last_good.get(file)
        kept = running.get(name, {}) if name else {}
        stale = file in last_good or (
            bool(kept.get("stale")) and where(kept) == os.path.abspath(file))
        state = states.get(name) if name else None
        next_fire = None
        if job is not None and job.enabled and job.schedules:
            mark = state.watermark if state is not None and state.watermark else now
            next_fire = next(iter(triggers.next_fires(job.schedules, max(now, mark), 1)), None)
        breaker = job.circuit_breaker if job else _kept_breaker(kept) if stale else None
        row = job_row(
            file, name, job, loaded.problems.get(file, ()), now=now, stale=stale,
            next_fire=next_fire,
            # Unknown only for a file of which no version was ever loaded.
            circuit_open=None if job is None and not stale else state is not None and (
                circuit_open(breaker, state.failures, state.circuit_opened_at, now)),
            last=last.get(name) if name else None, active=counts[name] if name else 0,
            queued=queued[name] if name else 0,
            pause=(state.paused_at, state.paused_by, state.paused_reason)
            if state is not None and state.paused_at is not None else None)
        if job is None and stale:  # the version that runs, as the daemon describes it
            row.update(enabled=kept.get("enabled"), schedule=kept.get("schedule"),
                       version=kept.get("sha256"))
        row["daemon"] = None if daemon is None or not name else (
            "running last good version" if stale else
            "loaded" if name in running else "not loaded")
        rows.append(row)
    return rows


def _kept_breaker(kept: Mapping[str, Any]) -> CircuitBreaker | None:
    """The circuit breaker of the version the daemon runs, from what it wrote of it."""
    breaker = kept.get("circuit_breaker")
    return CircuitBreaker(int(breaker["after"]), float(breaker["cooldown"])) if breaker else None

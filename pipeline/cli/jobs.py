"""Commands about job files: validate, schema, graph, next, list."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from pipeline import dag, spec, triggers
from pipeline.cli import Settings, dirs, fail, pass_settings
from pipeline.cli.jobfiles import find_job, jobs_on_disk
from pipeline.cli.text import echo_json, local, parse_time, table, zone_of
from pipeline.errors import Problem
from pipeline.model import Job, RunRecord, run_as_dict, utc_now


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
    files, a call to a job outside them is not judged.
    """
    targets = [Path(p) for p in paths] or [settings.jobs_dir]
    for target in targets:
        if not target.exists():
            raise click.BadParameter(f"{target} does not exist", param_hint="PATHS")
    loaded = settings.needing_plugins(
        lambda: spec.load_jobs(targets, runner_schemas=settings.runner_schemas()))
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
        echo_json(spec.job_schema(settings.runner_schemas()))
        return
    registry = settings.runners()
    if runner not in registry:
        raise click.BadParameter(f"unknown runner {runner!r} (known: "
                                 f"{', '.join(sorted(registry))})", param_hint="--runner")
    echo_json(dict(registry[runner].schema))


@click.command()
@click.argument("job")
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text",
              show_default=True)
@dirs
@pass_settings
def graph(settings: Settings, job: str, fmt: str) -> None:
    """Print a job's step DAG."""
    click.echo(dag.render(find_job(settings, job, missing_code=1), fmt))


@click.command(name="next")
@click.argument("job")
@click.option("-n", "count", type=click.IntRange(1, 10000), default=5, show_default=True)
@click.option("--after", "after", metavar="TIME", help="ISO 8601 time [default: now]")
@dirs
@pass_settings
def next_(settings: Settings, job: str, count: int, after: str | None) -> None:
    """Print the next N fire times of JOB (a name or a file), in the job's zone."""
    definition = find_job(settings, job, missing_code=1)
    zone = definition.schedules[0].timezone if definition.schedules else triggers.local_zone()
    start = parse_time(after, zone) if after else utc_now()
    if not definition.schedules:
        click.echo(f"pipeline: job {definition.name} has no schedule; it runs only when "
                   "triggered", err=True)
        return
    if not definition.enabled:
        click.echo(f"pipeline: job {definition.name} is disabled (enabled: false); these are "
                   "the fires it would get", err=True)
    for fire in triggers.next_fires(definition.schedules, start, count):
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
    running: dict[str, Any] = (daemon or {}).get("jobs", {})

    def where(info: Mapping[str, Any]) -> str:
        return os.path.abspath(str(info.get("path") or info.get("file")))

    # A file that the daemon loaded once may not even parse now: the daemon knows its name.
    named_by_daemon = {where(info): name for name, info in running.items() if info.get("file")}
    files = sorted({*loaded.files, *loaded.problems})
    rows: list[dict[str, Any]] = []
    definitions: list[Job | None] = []  # each row's valid job, if its file holds one
    breakers: dict[str, tuple[int, float]] = {}  # job -> (after, cooldown), where one is known
    for file in files:
        name = loaded.files.get(file) or named_by_daemon.get(os.path.abspath(file))
        job = loaded.jobs.get(name) if name and file not in loaded.problems else None
        kept = running.get(name, {}) if name else {}
        stale = bool(kept.get("stale")) and where(kept) == os.path.abspath(file)
        if name and job is not None and job.circuit_breaker is not None:
            breakers[name] = (job.circuit_breaker.after, job.circuit_breaker.cooldown)
        elif name and stale and kept.get("circuit_breaker"):
            breakers[name] = (int(kept["circuit_breaker"]["after"]),
                              float(kept["circuit_breaker"]["cooldown"]))
        rows.append({
            "name": name, "file": file, "valid": file not in loaded.problems,
            "errors": [p.as_dict() for p in loaded.problems.get(file, ())],
            "enabled": job.enabled if job else kept.get("enabled") if stale else None,
            "schedule": ("; ".join(triggers.describe(s) for s in job.schedules) or None)
            if job else kept.get("schedule") if stale else None,
            "next_fire_time": None, "last_run": None, "active_runs": 0,
            # Unknown only for a file of which no version was ever loaded.
            "circuit": "closed" if job is not None or stale else None,
            "paused": False, "paused_reason": None, "paused_by": None,
            "stale": stale,
            "version": job.sha256 if job else kept.get("sha256") if stale else None,
            "daemon": None if daemon is None or not name else (
                "running last good version" if stale else
                "loaded" if name in running else "not loaded"),
        })
        definitions.append(job)
    last: Mapping[str, RunRecord] = {}
    marks: Mapping[str, datetime] = {}
    active: Sequence[RunRecord] = []
    opened: Mapping[str, datetime | None] = {}
    states: Mapping[str, Any] = {}
    if has_state(settings):
        with open_state(settings) as store:
            last, active, states = store.last_runs(), store.active_runs(), store.job_states()
            marks = {n: st.watermark for n, st in states.items() if st.watermark is not None}
            opened = {name: states[name].circuit_opened_at for name, (after, _) in
                      breakers.items() if name in states and states[name].failures >= after}
    now = utc_now()
    for row, job in zip(rows, definitions, strict=True):
        name = row["name"]
        if job is not None and job.enabled and job.schedules:
            fires = triggers.next_fires(job.schedules, max(now, marks.get(name, now)), 1)
            row["next_fire_time"] = fires[0].isoformat() if fires else None
        if name in last:
            row["last_run"] = run_as_dict(last[name], steps=False)
        row["active_runs"] = sum(1 for r in active if r.job == name) if name else 0
        # Open as the scheduler judges it: from the failure that opened it until the cooldown
        # has passed.
        since = opened.get(name) if name else None
        if since is not None and now < since + timedelta(seconds=breakers[name][1]):
            row["circuit"] = "open"
        state = states.get(name) if name else None
        if state is not None and state.paused_at is not None:
            row.update(paused=True, paused_reason=state.paused_reason,
                       paused_by=state.paused_by)
    if as_json:
        echo_json(rows)
        return

    def validity(row: dict[str, Any]) -> str:
        if row["valid"]:
            return "valid"
        return f"INVALID ({len(row['errors'])})" + (", last good version runs"
                                                    if row["stale"] else "")

    def when(row: dict[str, Any]) -> str:
        if not row["next_fire_time"]:
            return "-"
        return local(datetime.fromisoformat(row["next_fire_time"]),
                     zone_of(loaded.jobs.get(row["name"])))

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

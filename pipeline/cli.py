"""The ``pipeline`` command: the one place that wires real objects together.

Settings travel in the click context (``Settings`` on ``ctx.obj``); errors are
``PipelineError``s whose ``exit_code`` becomes the exit status (CONTRACT §4).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pipeline import __version__

# Everything but click is imported where it is used: `pipeline --help` must cost little more
# than importing click (a benchmark target), and `validate` must not pay for trio or the store.
if TYPE_CHECKING:
    from datetime import datetime, tzinfo

    from pipeline.model import Job, RunRecord, RunStatus, StepRecord
    from pipeline.spec import Loaded
    from pipeline.store import NodeInfo, Store

T = TypeVar("T")
RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "skipped", "interrupted")


class Settings:
    """Where the jobs and the state are, and the runner registry once it is loaded."""

    def __init__(self) -> None:
        from pathlib import Path

        self.jobs_dir = Path("jobs.d")
        self.state_dir = Path(".pipeline")
        self.store_url: str | None = None  # a shared store (cluster mode); None: SQLite
        self.plugins = False  # load plug-in runners too (the daemon, or a job that uses one)
        self._runners: Any = None

    def runners(self) -> Any:
        """The runner registry (loaded once; broken plug-ins reported)."""
        if self._runners is None:
            from pipeline.runners import builtin_runners, load_runners

            if not self.plugins:
                self._runners = builtin_runners()
            else:
                self._runners, problems = load_runners()
                for problem in problems:
                    click.echo(f"pipeline: warning: {problem}", err=True)
        return self._runners

    def runner_schemas(self) -> dict[str, Any]:
        from pipeline.runners import schemas_of

        return schemas_of(self.runners())

    def needing_plugins(self, load: Callable[[], T]) -> T:
        """``load()`` with the built-in runners; again with plug-ins if it met an unknown one.

        Finding plug-ins means reading every installed package's metadata (~50 ms of imports
        and scanning), which a job that uses only built-in runners should not pay for.
        """
        from pipeline.errors import JobInvalid

        try:
            result = load()
        except JobInvalid as exc:
            if self.plugins or not any("unknown runner" in p.message for p in exc.problems):
                raise
            result = None
        problems = getattr(result, "problems", {})
        if result is not None and (self.plugins or not any(
                "unknown runner" in p.message for ps in problems.values() for p in ps)):
            return result
        self.plugins, self._runners = True, None
        return load()


pass_settings = click.make_pass_decorator(Settings, ensure=True)


def _set_jobs_dir(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    from pathlib import Path

    if value is not None:
        ctx.ensure_object(Settings).jobs_dir = Path(value)


def _set_state_dir(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    from pathlib import Path

    if value is not None:
        ctx.ensure_object(Settings).state_dir = Path(value)


def _set_store(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(Settings).store_url = value.strip()


def _set_store_file(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    from pipeline.errors import UsageError

    if not value:
        return
    from pathlib import Path

    try:
        text = Path(value).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the store URL from {value}: "
                         f"{exc.strerror or exc}") from None
    if not text:
        raise UsageError(f"the store file {value} is empty")
    ctx.ensure_object(Settings).store_url = text


def dirs(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--jobs-dir``, ``--state-dir`` and the store, accepted before or after the command
    name."""
    command = click.option(
        "--store-file", type=click.Path(), expose_value=False, envvar="PIPELINE_STORE_FILE",
        callback=_set_store_file, is_eager=True,
        help="A file holding the store URL (keeps its password out of `ps`).")(command)
    command = click.option(
        "--store", metavar="URL", expose_value=False, envvar="PIPELINE_STORE",
        callback=_set_store, is_eager=True,
        help="A PostgreSQL store shared by a cluster (postgresql://...) [default: SQLite in "
             "the state directory]. Visible in `ps`: prefer --store-file or the environment."
    )(command)

    command = click.option("--jobs-dir", type=click.Path(), expose_value=False,
                           envvar="PIPELINE_JOBS_DIR", callback=_set_jobs_dir,
                           is_eager=True, help="Jobs directory [default: ./jobs.d]")(command)
    return click.option("--state-dir", type=click.Path(), expose_value=False,
                        envvar="PIPELINE_STATE_DIR", callback=_set_state_dir, is_eager=True,
                        help="State directory [default: ./.pipeline]")(command)


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Log lines on stderr: ``text`` and ``json`` for the daemon; ``cli`` for the other
    commands, whose few warnings (a repaired crash) read as their other messages do."""
    from loguru import logger

    logger.remove()
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True)
    elif fmt == "cli":
        logger.add(sys.stderr, level=level, colorize=False, format=_cli_line)
    else:
        logger.add(sys.stderr, level=level, colorize=sys.stderr.isatty(), format=_log_line)


def _cli_line(record: Any) -> str:
    return "pipeline: " + ("" if record["level"].name == "INFO" else
                           record["level"].name.lower() + ": ") + "{message}\n"


def _log_line(record: Any) -> str:
    """One text log line: time, level, message, then where it comes from (job=, run=, step=)."""
    where = " ".join(f"{k}={v}" for k, v in record["extra"].items())
    where = where.replace("{", "{{").replace("}", "}}")
    return ("<dim>{time:YYYY-MM-DD HH:mm:ss.SSS}</dim> <level>{level: <7}</level> {message}"
            + (f" <dim>[{where}]</dim>" if where else "") + "\n{exception}")


class Group(click.Group):
    """Turns a PipelineError (or an OSError) into its message and exit status, never a
    traceback, also when a trio nursery wrapped it in an ExceptionGroup on its way out."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exception, BaseExceptionGroup) as exc:
            errors = known_errors(exc)
            if errors is None:
                raise
            for error in errors:
                text = error_text(error)
                if text:
                    click.echo(text, err=True)
            ctx.exit(max(exit_code(e) for e in errors))


def known_errors(exc: BaseException, *, nested: bool = False) -> list[BaseException] | None:
    """The errors to show as lines: ``exc`` itself, or every leaf of an ExceptionGroup; None
    if any of them is not ours to explain (a bug: its traceback is what helps).

    A ``SystemExit`` inside a group is a ``fail`` that happened in a trio task: its message is
    out already, its exit status still counts.
    """
    from pipeline.errors import PipelineError

    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            found = known_errors(inner, nested=True)
            if found is None:
                return None
            leaves.extend(found)
        return leaves or None
    if isinstance(exc, PipelineError | OSError) or (nested and isinstance(exc, SystemExit)):
        return [exc]
    return None


def error_text(error: BaseException) -> str:
    """The line(s) a user sees for ``error``; empty for one that said its piece already."""
    from pipeline.errors import JobInvalid

    if isinstance(error, SystemExit):
        return ""
    if isinstance(error, JobInvalid):
        return "\n".join(str(problem) for problem in error.problems)
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename}" if error.filename is not None else ""
        return f"pipeline: cannot use{where}: {error.strerror}"
    return f"pipeline: {error}"


def exit_code(error: BaseException) -> int:
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return int(getattr(error, "exit_code", 1))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pipeline")
@dirs
def main() -> None:
    """A declarative pipeline runner: YAML jobs on schedules, run as DAGs of steps."""


# -- helpers -------------------------------------------------------------------------------


def now_utc() -> datetime:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"pipeline: {message}", err=True)
    sys.exit(code)


def find_job(settings: Settings, ref: str, *, missing_code: int = 2) -> Job:
    """A job by file path or by name in the jobs directory; JobInvalid if its file is bad."""
    from pathlib import Path

    from pipeline import spec
    from pipeline.errors import JobInvalid

    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or os.sep in ref:
        if not path.is_file():
            fail(f"no job file {ref}", missing_code)
        return settings.needing_plugins(
            lambda: spec.load_job(path, runner_schemas=settings.runner_schemas()))
    if not settings.jobs_dir.is_dir():
        fail(f"no jobs directory {settings.jobs_dir} (and {ref!r} is not a file)", missing_code)
    loaded = settings.needing_plugins(
        lambda: spec.load_jobs([settings.jobs_dir], runner_schemas=settings.runner_schemas()))
    if ref in loaded.jobs:
        return loaded.jobs[ref]
    for file, name in loaded.files.items():
        if name == ref and file in loaded.problems:
            raise JobInvalid(loaded.problems[file])
    known = ", ".join(sorted(loaded.jobs)) or "none"
    fail(f"unknown job {ref!r} in {settings.jobs_dir} (jobs: {known})", missing_code)


def has_state(settings: Settings) -> bool:
    """Whether anything has run with this state directory (it has a database), or a shared
    store is named (it may well hold runs)."""
    from pipeline.store.sqlite import DB_FILE

    return settings.store_url is not None or (settings.state_dir / DB_FILE).is_file()


@contextmanager
def open_state(settings: Settings, *, create: bool = False) -> Iterator[Store]:
    """The state store, after taking back the runs of dead nodes (CONTRACT §8).

    Only with ``create`` is a missing state directory made; otherwise ``NotFound`` ("no runs
    yet") is raised, so that looking (``list``, ``runs``, ``show``, ``logs``) never leaves a
    ``.pipeline`` behind in whatever folder it was typed in. What recovery repairs is said on
    stderr.
    """
    from pipeline.errors import NotFound
    from pipeline.recovery import recover
    from pipeline.store import open_store

    configure_logging(fmt="cli")
    if not create and not has_state(settings):
        raise NotFound(f"no runs yet: there is no state directory {settings.state_dir}")
    store = open_store(settings.state_dir, settings.store_url)
    try:
        recover(store, settings.state_dir, now_utc())
        yield store
    finally:
        store.close()


def check_run_id(run_id: str) -> str:
    from pipeline.errors import NotFound
    from pipeline.model import RUN_ID

    if not RUN_ID.match(run_id):
        raise NotFound(f"no run {run_id!r}: run ids look like 20261128T201851-3f9a2c1b")
    return run_id


def get_run(store: Store, run_id: str) -> RunRecord:
    from pipeline.errors import NotFound

    record = store.run(check_run_id(run_id))
    if record is None:
        raise NotFound(f"no run {run_id!r}")
    return record


def parse_kv(pairs: Sequence[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="-p")
        given[key] = value
    return given


def echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def local(moment: datetime | None, zone: tzinfo | None = None) -> str:
    """``2026-12-07 02:30:00+01:00``: the time in ``zone`` (default the machine's), with its
    offset, so a reader never has to guess which zone a time is in."""
    return moment.astimezone(zone).isoformat(sep=" ", timespec="seconds") if moment else "-"


def zone_of(job: Job | None) -> tzinfo | None:
    """The zone a job's times are shown in: its schedule's; None (the machine's) without one."""
    return job.schedules[0].timezone if job is not None and job.schedules else None


def jobs_on_disk(settings: Settings) -> Loaded | None:
    """Every job file in the jobs directory, loaded; None if there is no jobs directory."""
    from pipeline import spec

    if not settings.jobs_dir.is_dir():
        return None
    return settings.needing_plugins(lambda: spec.load_jobs(
        [settings.jobs_dir], runner_schemas=settings.runner_schemas()))


def daemon_info(settings: Settings) -> dict[str, Any] | None:
    """What the live daemon on the state directory says it loaded; None if none runs."""
    from pipeline.daemon import read_daemon_file

    return read_daemon_file(settings.state_dir)


def known_names(loaded: Loaded | None, daemon: Mapping[str, Any] | None) -> set[str]:
    """Job names that a file claims, valid or not, or that the daemon runs."""
    names = set(loaded.files.values()) if loaded is not None else set()
    return names | set((daemon or {}).get("jobs", {}))


def job_zones(loaded: Loaded | None, daemon: Mapping[str, Any] | None) -> dict[str, tzinfo]:
    """Each job's zone: from its file, else from the version the daemon runs."""
    from zoneinfo import ZoneInfo

    zones: dict[str, tzinfo] = {}
    for name, info in (daemon or {}).get("jobs", {}).items():
        try:
            zones[name] = ZoneInfo(str(info["timezone"]))
        except (KeyError, ValueError):  # an older daemon.json, or no schedule
            pass
    for name, job in (loaded.jobs.items() if loaded is not None else ()):
        zone = zone_of(job)
        if zone is not None:
            zones[name] = zone
    return zones


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                   .rstrip())


# -- validate, schema, graph --------------------------------------------------------------


@main.command()
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
    from pathlib import Path

    from pipeline import spec
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


@main.command()
@click.option("--runner", help="Print the schema of this runner's `with` instead.")
@pass_settings
def schema(settings: Settings, runner: str | None) -> None:
    """Print the job file's JSON Schema (or a runner's)."""
    from pipeline import spec

    settings.plugins = True

    if runner is None:
        echo_json(spec.job_schema(settings.runner_schemas()))
        return
    registry = settings.runners()
    if runner not in registry:
        raise click.BadParameter(f"unknown runner {runner!r} (known: "
                                 f"{', '.join(sorted(registry))})", param_hint="--runner")
    echo_json(dict(registry[runner].schema))


@main.command()
@click.argument("job")
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text",
              show_default=True)
@dirs
@pass_settings
def graph(settings: Settings, job: str, fmt: str) -> None:
    """Print a job's step DAG."""
    from pipeline import dag

    click.echo(dag.render(find_job(settings, job, missing_code=1), fmt))


# -- run -----------------------------------------------------------------------------------


@main.command()
@click.argument("job")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the resolved commands.")
@click.option("--force", is_flag=True,
              help="Run even when the job's concurrency policy says another of its runs (the "
                   "daemon's, say) must end first.")
@dirs
@pass_settings
def run(settings: Settings, job: str, params: tuple[str, ...], dry_run: bool,
        force: bool) -> None:
    """Run JOB (a name or a file) once, now, in the foreground.

    A run of the job that is still active (under the daemon or another `pipeline run`) stops
    this one, as the job's `concurrency` policy says, unless --force.

    Exit status: 0 succeeded, 1 failed or refused, 2 invalid job or parameters, 130
    interrupted.
    """
    from pipeline import spec

    definition = find_job(settings, job)
    values = spec.parse_params(definition, parse_kv(params))
    if dry_run:
        from pipeline.plan import print_plan

        print_plan(definition, values, out=sys.stdout)
        return
    with open_state(settings, create=True) as store:
        # Recovery has just marked the runs of dead processes interrupted: what is still
        # active has a live owner.
        active = store.active_runs(definition.name)
        nodes = {n.id: n for n in store.nodes()} if active else {}
    if not force:
        refuse_overlap(settings, definition, active, nodes)
    status = run_in_foreground(settings, definition, values, force=force)
    sys.exit({"succeeded": 0, "cancelled": 130}.get(str(status), 1))


def refuse_overlap(settings: Settings, job: Job, active: Sequence[RunRecord],
                   nodes: Mapping[str, NodeInfo]) -> None:
    """Exit 1 if the job's concurrency policy allows no run besides ``active`` now.

    ``forbid`` says so outright; ``queue`` and ``replace`` too, as far as a foreground run can
    follow them: it can neither wait in the daemon's queue nor cancel another process's run.
    """
    from pipeline.model import Policy

    policy = job.concurrency
    room = policy.max_active if policy.policy is Policy.ALLOW else 1
    if not active or room is None or len(active) < room:
        return
    run = active[-1]
    since = run.started_at or run.queued_at
    node = nodes.get(run.node or "")
    pid = node.identity.rpartition("/")[2].partition(":")[0] if node else "?"
    by = ("the daemon" if node is not None and "scheduler" in node.roles else
          "another process" if node is not None else "no node yet") + f" (pid {pid})"
    fail(f"job {job.name} has an active run: {run.id}, {run.status} since "
         f"{local(since, zone_of(job))}, by {by}; concurrency: {policy.policy} "
         f"allows {room} at a time. Wait for it, stop it (pipeline stop {run.id}), or give "
         "--force to run anyway")


def run_in_foreground(settings: Settings, job: Job, params: dict[str, Any], *,
                      force: bool = False) -> RunStatus:
    import trio

    from pipeline import foreground
    from pipeline.events import Event
    from pipeline.live import LiveView
    from pipeline.statedir import new_run_id

    with open_state(settings) as store:
        run_id = new_run_id(now_utc())
        view = LiveView(job, run_id)

        def show(event: Event) -> None:
            view.update(event)

        def jobs(name: str) -> Job | None:
            return find_job(settings, name, missing_code=1)

        outcome = trio.run(lambda: foreground.run_in_foreground(
            job, params, store=store, state_dir=settings.state_dir,
            runners=settings.runners(), jobs=jobs, observers=(show,), run_id=run_id,
            force=force, tick=view.tick))
        view.tick()
        record = store.run(run_id)
        took = f" in {record.duration_s:.2f}s" if record and record.duration_s else ""
        reason = f" ({record.reason})" if record and record.reason else ""
        click.echo(f"run {run_id} {outcome.status}{took}{reason}", err=True)
        return outcome.status


# -- history -------------------------------------------------------------------------------


@main.command()
@click.argument("job", required=False)
@click.option("--status", type=click.Choice(RUN_STATES))
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def runs(settings: Settings, job: str | None, status: str | None, limit: int,
         as_json: bool) -> None:
    """Run history, newest first, times in each job's zone.

    Exit status 1 for a JOB that no file in the jobs directory names and that has no runs.
    """
    from pipeline.errors import NotFound
    from pipeline.model import RunStatus, run_as_dict

    loaded = jobs_on_disk(settings)
    daemon = daemon_info(settings)
    found: list[RunRecord] = []
    ever = job is None
    if has_state(settings):
        with open_state(settings) as store:
            found = store.runs(job=job, status=RunStatus(status) if status else None,
                               limit=limit)
            ever = bool(found) or job is None or store.count_runs(job=job) > 0
    if not ever and job not in known_names(loaded, daemon):
        where = f"in {settings.jobs_dir}" if loaded is not None else \
            f"(no jobs directory {settings.jobs_dir})"
        raise NotFound(f"unknown job {job!r}: no job file {where} names it, and it has no runs")
    if as_json:
        echo_json([run_as_dict(r, steps=False) for r in found])
        return
    if not found:
        click.echo(f"no runs{f' of {job}' if job else ''}"
                   f"{f' with status {status}' if status else ''} yet", err=True)
        return
    zones = job_zones(loaded, daemon)
    table([(r.id, r.job, str(r.status), str(r.trigger),
            local(r.started_at or r.queued_at, zones.get(r.job)),
            f"{r.duration_s:.1f}s" if r.duration_s is not None else "-", r.reason or "")
           for r in found], ("RUN", "JOB", "STATUS", "TRIGGER", "STARTED", "TOOK", "REASON"))


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def show(settings: Settings, run_id: str, as_json: bool) -> None:
    """One run with its steps (in file order), and the run's own outputs."""
    from pipeline.model import in_file_order, run_as_dict

    with open_state(settings) as store:
        record = get_run(store, run_id)
    if as_json:
        echo_json(run_as_dict(record))
        return
    version = record.version
    click.echo(f"run      {record.id}\njob      {record.job}\nstatus   {record.status}"
               + (f" ({record.reason})" if record.reason else "")
               + f"\ntrigger  {record.trigger}"
               + (f"\nfired    {local(record.fire_time)}" if record.fire_time else "")
               + f"\nstarted  {local(record.started_at)}\nfinished {local(record.finished_at)}"
               + (f"\ntook     {record.duration_s:.2f}s" if record.duration_s is not None
                  else ""))
    if record.params:
        click.echo("params   " + ", ".join(f"{k}={v}" for k, v in record.params.items()))
    if version is not None:
        git = ""
        if version.git_commit:
            git = f" (git {version.git_commit[:12]}{', modified' if version.git_dirty else ''})"
        click.echo(f"version  sha256:{version.sha256[:16]}{git}")
    if record.outputs:
        click.echo("outputs  " + ", ".join(f"{k}={v}" for k, v in record.outputs.items()))
    click.echo("")
    table([(s.id, str(s.status), str(s.attempt or "-"),
            str(s.exit_code) if s.exit_code is not None else "-",
            f"{s.duration_s:.2f}s" if s.duration_s is not None else "-",
            ", ".join(f"{k}={v}" for k, v in s.outputs.items())[:60], s.error or "")
           for s in in_file_order(record)],
          ("STEP", "STATUS", "ATTEMPT", "EXIT", "TOOK", "OUTPUTS", "ERROR"))


@main.command()
@click.argument("run_id")
@click.argument("step", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the run is active.")
@dirs
@pass_settings
def logs(settings: Settings, run_id: str, step: str | None, follow: bool) -> None:
    """Print a run's step logs (one step, or all in file order).

    A for_each step prints each item's log in item order, each under a heading naming the
    item; STEP may also name one item (build.2). Ctrl-C while following exits 130.
    """
    from pipeline.errors import NotFound
    from pipeline.logship import shipped_whole
    from pipeline.model import STEP_INSTANCE_ID, in_file_order

    if step is not None and not STEP_INSTANCE_ID.match(step):
        raise NotFound(f"no step {step!r}")

    def wanted(step_id: str) -> bool:
        return step is None or step_id == step or step_id.startswith(f"{step}.")

    def heading(s: StepRecord) -> str:
        base, _, index = s.id.partition(".")
        if not index:
            return f"==> {s.id} <=="
        item = "" if s.item is None else f" (item: {_item_text(s.item)})"
        return f"==> {base}[{index}]{item} <=="

    try:
        with open_state(settings) as store:
            record = get_run(store, run_id)
            printed: dict[str, tuple[int, int]] = {}  # step -> (the log's inode, bytes printed)
            while True:
                steps = [s for s in in_file_order(record) if s.log and wanted(s.id)]
                if step is not None and not steps and record.status.finished:
                    if any(wanted(s.id) for s in record.steps):
                        return  # the step never ran: no log
                    raise NotFound(f"run {run_id} has no step {step!r}")
                for s in steps:
                    assert s.log is not None
                    seen = printed.get(s.id)
                    if seen is None and s.id != step:
                        click.echo(heading(s))
                    try:
                        if shipped_whole(store, record.id, s.id):
                            raise FileNotFoundError  # a file here may be of a lost attempt
                        with (settings.state_dir / s.log).open("rb") as f:
                            inode, offset = os.fstat(f.fileno()).st_ino, seen[1] if seen else 0
                            if seen is not None and seen[0] != inode:
                                offset = _after_cap(f, offset)
                            f.seek(offset)
                            data = f.read()
                    except FileNotFoundError:
                        # Not on this machine: a cluster's node shipped it to the store.
                        (inode, offset) = seen or (0, 0)
                        data = _shipped(store, record.id, s.id, offset)
                    printed[s.id] = (inode, offset + len(data))
                    if data:
                        sys.stdout.buffer.write(data)
                        sys.stdout.flush()
                if not follow or record.status.finished:
                    return
                time.sleep(0.5)
                record = get_run(store, run_id)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C ends a follow: nothing to report


def _shipped(store: Store, run_id: str, step_id: str, offset: int) -> bytes:
    """What a shared store holds of a step's log from ``offset`` (nothing with SQLite)."""
    if not store.shared:
        return b""
    out = b""
    while True:
        data, _ = store.shipped_log(run_id, step_id, offset + len(out))
        if not data:
            return out
        out += data


def _item_text(item: str) -> str:
    """A for_each item (stored as JSON) as a log heading shows it: a string as it is."""
    import json

    try:
        value = json.loads(item)
    except ValueError:
        return item[:80]
    return (value if isinstance(value, str) and value.isprintable() else item)[:80]


def _after_cap(f: Any, offset: int) -> int:
    """Where to go on in a log that was replaced while followed, after ``offset`` bytes: a
    capped log is put together when its step ends (head, marker, tail), and a follower that
    printed beyond the head goes on at the marker."""
    import mmap
    import re

    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return 0
    marker = re.compile(rb"\[pipeline\] \d+ bytes dropped here: the log keeps the first \d+ "
                        rb"and the last \d+ bytes\n")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        found = marker.search(view, 0, min(size, offset + 256))
    return min(offset, size if found is None else found.start())


# -- the daemon ----------------------------------------------------------------------------


def token_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--token`` and ``--token-file``, for ``read_token`` to make one token of."""
    command = click.option(
        "--token-file", type=click.Path(), envvar="PIPELINE_TOKEN_FILE",
        metavar="PATH", help="Read the API token from PATH (env PIPELINE_TOKEN_FILE).",
    )(command)
    return click.option(
        "--token", envvar="PIPELINE_TOKEN", default=None, metavar="TOKEN",
        help="The API's bearer token (env PIPELINE_TOKEN). On the command line every user of "
             "the machine can read it in `ps`: prefer --token-file or the environment.",
    )(command)


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The token from ``--token`` or ``--token-file`` (or their variables).

    One given on the command line wins over the other's variable; both on the command line
    (or both variables) is a usage error, rather than a guess at which one was meant.
    """
    from pathlib import Path

    from click.core import ParameterSource

    if token_file is None:
        return token or None
    if token:
        ctx = click.get_current_context()
        given = ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE
        if given == (ctx.get_parameter_source("token_file") is ParameterSource.COMMANDLINE):
            raise click.UsageError("give --token or --token-file (PIPELINE_TOKEN or "
                                   "PIPELINE_TOKEN_FILE), not both")
        if given:
            return token
    try:
        text = Path(token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fail(f"cannot read the token file {token_file}: {reason}", 2)
    found = text.strip()
    if not found:
        fail(f"the token file {token_file} is empty", 2)
    if "\n" in found:
        fail(f"the token file {token_file} holds more than one line; it should hold the token "
             "alone", 2)
    return found


def node_options(name: str | None, labels: str, roles: str, max_runs: int | None,
                 listen: str | None) -> NodeInfo:
    """This daemon as a node, from its options; a usage error for a bad label or role."""
    import re

    from pipeline.errors import UsageError
    from pipeline.nodes import this_node

    found: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in labels.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", key.strip()):
            raise UsageError(f"--labels: {pair!r} is not KEY=VALUE (a key is letters, digits, "
                             "'_', '.', '-')")
        found[key.strip()] = value.strip()
    chosen = frozenset(filter(None, (r.strip() for r in roles.split(","))))
    unknown = chosen - {"scheduler", "runner", "http"}
    if unknown or not chosen:
        raise UsageError(f"--roles: {', '.join(sorted(unknown)) or 'none given'}; the roles "
                         "are scheduler, runner and http")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise UsageError(f"--node-name: {name!r} is not a name (letters, digits, '_', '.', "
                         "'-')")
    return this_node(name=name, roles=chosen, labels=found, max_runs=max_runs, listen=listen)


def check_jobs_dir(settings: Settings) -> None:
    """Exit 2 unless the jobs directory is a directory: a typo must not serve nothing."""
    jobs_dir = settings.jobs_dir
    if not jobs_dir.exists():
        fail(f"the jobs directory {jobs_dir} does not exist (give --jobs-dir or set "
             "PIPELINE_JOBS_DIR)", 2)
    if not jobs_dir.is_dir():
        fail(f"the jobs directory {jobs_dir} is not a directory", 2)


@main.command()
@click.option("--grace", default="30s", show_default=True, metavar="DURATION",
              help="After SIGTERM/SIGINT, how long active runs get to finish before they are "
                   "stopped and recorded as interrupted (each step's process group then gets "
                   "SIGTERM, and SIGKILL after the step's own grace, 10s by default).")
@click.option("--listen", envvar="PIPELINE_LISTEN", default="127.0.0.1:8765", show_default=True,
              metavar="HOST:PORT", help="HTTP address of the status page and API.")
@click.option("--no-http", is_flag=True, help="Serve no HTTP endpoint.")
@token_options
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False), default="INFO",
              show_default=True)
@click.option("--node-name", metavar="NAME", envvar="PIPELINE_NODE_NAME",
              help="This node's name, for people [default: host name and a short id].")
@click.option("--labels", metavar="K=V,...", envvar="PIPELINE_LABELS", default="",
              help="Labels of this node; jobs with `runs_on` run only on nodes that carry "
                   "theirs.")
@click.option("--roles", metavar="ROLES", envvar="PIPELINE_ROLES",
              default="scheduler,runner,http", show_default=True,
              help="What this node does: scheduler (makes fires), runner (runs runs), http.")
@click.option("--lease", default="30s", show_default=True, metavar="DURATION",
              help="A node that has not renewed its lease for this long is lost; its runs "
                   "are interrupted (or retried) within lease + 5s.")
@click.option("--max-runs", type=click.IntRange(1), default=None,
              help="Runs this node holds at once [default: unlimited].")
@dirs
@pass_settings
def serve(settings: Settings, grace: str, listen: str, no_http: bool, token: str | None,
          token_file: str | None, log_format: str, log_level: str, node_name: str | None,
          labels: str, roles: str, lease: str, max_runs: int | None) -> None:
    """Run the daemon: load and watch the jobs directory, fire schedules, serve HTTP.

    The HTTP address is bound first: if it is taken, serve says so and exits 1 having
    written nothing. With --store, the daemon is one node of a cluster sharing that
    PostgreSQL database (CONTRACT §9).
    """
    from functools import partial

    settings.plugins = True  # files may start using a plug-in runner at any time

    import trio

    from pipeline import daemon
    from pipeline.errors import PipelineError
    from pipeline.spec import parse_duration
    from pipeline.statedir import lock_state_dir
    from pipeline.store import open_store

    configure_logging(log_level.upper(), log_format)
    try:
        grace_s = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    try:
        lease_s = parse_duration(lease)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lease") from None
    node = node_options(node_name, labels, roles, max_runs, None if no_http else listen)
    if "http" not in node.roles:
        no_http = True
    token = read_token(token, token_file)
    if "scheduler" in roles or settings.jobs_dir.exists():
        check_jobs_dir(settings)  # a runner-only node runs runs from their records
    serve_http = None
    sock = None
    if not no_http:
        from pipeline.http import check_listen, listen_socket
        from pipeline.http import serve_http as http_server

        check_listen(listen, token)
        try:
            sock = listen_socket(listen)
        except PipelineError:
            other = daemon.read_daemon_file(settings.state_dir)
            if other is not None:  # the likelier story: say that one
                raise PipelineError(f"another pipeline daemon (pid {other.get('pid')}) is using "
                                    f"the state directory {settings.state_dir}") from None
            raise

        async def serve_http(d: daemon.Daemon, *, task_status: Any) -> None:
            await http_server(d, listen=listen, token=token, sock=sock,
                              task_status=task_status)

    try:
        with lock_state_dir(settings.state_dir):
            store = open_store(settings.state_dir, settings.store_url, lease=lease_s)
            try:
                trio.run(partial(daemon.serve, jobs_dir=settings.jobs_dir,
                                 state_dir=settings.state_dir, store=store,
                                 runners=settings.runners(), grace=grace_s,
                                 serve_http=serve_http, listen=None if no_http else listen,
                                 node=node, lease=lease_s))
            finally:
                store.close()
    finally:
        if sock is not None:
            sock.close()  # unless the HTTP server took it over (and closed it itself)


# -- jobs and their schedules --------------------------------------------------------------


def parse_time(text: str, zone: Any) -> datetime:
    """An ISO 8601 time; without an offset it is read in ``zone``."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time "
                                 "(e.g. 2026-12-01T09:00:00+01:00)",
                                 param_hint="--after") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


@main.command(name="next")
@click.argument("job")
@click.option("-n", "count", type=click.IntRange(1, 10000), default=5, show_default=True)
@click.option("--after", "after", metavar="TIME", help="ISO 8601 time [default: now]")
@dirs
@pass_settings
def next_(settings: Settings, job: str, count: int, after: str | None) -> None:
    """Print the next N fire times of JOB (a name or a file), in the job's zone."""
    from pipeline import triggers

    definition = find_job(settings, job, missing_code=1)
    zone = definition.schedules[0].timezone if definition.schedules else triggers.local_zone()
    start = parse_time(after, zone) if after else now_utc()
    if not definition.schedules:
        click.echo(f"pipeline: job {definition.name} has no schedule; it runs only when "
                   "triggered", err=True)
        return
    if not definition.enabled:
        click.echo(f"pipeline: job {definition.name} is disabled (enabled: false); these are "
                   "the fires it would get", err=True)
    for fire in triggers.next_fires(definition.schedules, start, count):
        click.echo(fire.isoformat())


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def list_(settings: Settings, as_json: bool) -> None:
    """Every job in the jobs directory: schedule, next fire (in the job's zone), last status,
    circuit breaker, validity, and what a running daemon makes of it."""
    import os
    from datetime import datetime, timedelta

    from pipeline import triggers
    from pipeline.errors import Problem
    from pipeline.model import run_as_dict

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
    now = now_utc()
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


# -- talking to the daemon -----------------------------------------------------------------


def server_options(command: Any) -> Any:
    command = click.option("--server", metavar="URL", envvar="PIPELINE_SERVER",
                           help="The daemon's address [default: the one it recorded in the "
                                "state directory].")(command)
    return token_options(command)


@main.command()
@click.argument("job")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter (repeatable).")
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 1 unless it "
                                           "succeeded.")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@server_options
@dirs
@pass_settings
def trigger(settings: Settings, job: str, params: tuple[str, ...], wait: bool, as_json: bool,
            server: str | None, token: str | None, token_file: str | None) -> None:
    """Ask the daemon to run JOB now; print the run id.

    Exit status: 0 started (with --wait: succeeded), 1 refused, unknown job, no daemon or (with
    --wait) the run did not succeed, 2 bad parameters.
    """
    from pipeline import client

    token = read_token(token, token_file)
    base = client.server_url(settings.state_dir, server)
    answer = client.trigger(base, token, job, parse_kv(params), wait=wait)
    run_id = answer.get("run_id") or answer.get("id")
    if as_json:
        echo_json(answer)
    else:
        click.echo(run_id)
    if wait:
        reason = f" ({answer['reason']})" if answer.get("reason") else ""
        click.echo(f"run {run_id} {answer.get('status')}{reason}", err=True)
        if answer.get("status") != "succeeded":
            sys.exit(1)


@main.command()
@click.argument("run_id")
@server_options
@dirs
@pass_settings
def stop(settings: Settings, run_id: str, server: str | None, token: str | None,
         token_file: str | None) -> None:
    """Ask the daemon to cancel RUN_ID. Exit status: 0 stopping, 1 unknown or not running."""
    from pipeline import client

    token = read_token(token, token_file)
    client.stop(client.server_url(settings.state_dir, server), token, check_run_id(run_id))
    click.echo(f"run {run_id}: stopping", err=True)


# -- the cluster ---------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def nodes(settings: Settings, as_json: bool) -> None:
    """The nodes of the store: roles, labels, last heartbeat, active runs, version, and
    whether each one's jobs directory matches what the cluster fires."""
    from pipeline.nodes import node_views

    if not has_state(settings):
        fail(f"no nodes yet: there is no state directory {settings.state_dir}")
    with open_state(settings) as store:
        views = node_views(store.nodes(), store.now())
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("no nodes")
        return
    table([(v["name"], v["id"][:8], v["state"], ",".join(v["roles"]),
            ",".join(f"{k}={x}" for k, x in v["labels"].items()) or "-",
            f"{v['heartbeat_age_s']:.1f}s ago" if v["heartbeat_age_s"] is not None else "-",
            str(v["active_runs"]), v["version"] or "-",
            {True: "yes", False: "DIFFERS", None: "-"}[v["jobs_match"]])
           for v in views],
          ["NAME", "ID", "STATE", "ROLES", "LABELS", "HEARTBEAT", "RUNS", "VERSION", "JOBS"])


@main.command()
@dirs
@pass_settings
def migrate(settings: Settings) -> None:
    """Create or upgrade the store's tables (serve does it too, at start)."""
    from pipeline.store import open_store

    configure_logging(fmt="cli")
    settings.state_dir.mkdir(parents=True, exist_ok=True) if not settings.store_url else None
    store = open_store(settings.state_dir, settings.store_url)
    try:
        version = store.schema_version()
    finally:
        store.close()
    click.echo(f"the store is at schema version {version}")



# -- operating jobs ------------------------------------------------------------------------


def _operated(settings: Settings, store: Store, names: tuple[str, ...], every: bool,
              ) -> tuple[list[str], dict[str, Job]]:
    """The jobs a pause/resume names (``--all``: every job the files or the store know)."""
    from pipeline import operate
    from pipeline.errors import UsageError

    loaded = jobs_on_disk(settings)
    jobs = dict(loaded.jobs) if loaded is not None else {}
    if every == bool(names):
        raise UsageError("name the jobs, or give --all (not both)")
    if every:
        return sorted(set(jobs) | set(store.job_states())), jobs
    return operate.known_jobs(store, [*jobs, *(loaded.files.values() if loaded else [])],
                              list(names)), jobs


@main.command()
@click.argument("jobs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Pause every job.")
@click.option("--reason", metavar="TEXT", help="Why, for whoever looks later.")
@dirs
@pass_settings
def pause(settings: Settings, jobs: tuple[str, ...], every: bool, reason: str | None) -> None:
    """Stop firing JOB... on schedule (and on events) until resumed; manual runs still work.

    Recorded in the state with who, when and why; a running daemon (every node of a
    cluster) acts on it within a second.
    """
    from pipeline import operate

    with open_state(settings, create=True) as store:
        names, _ = _operated(settings, store, jobs, every)
        operate.pause(store, names, by=operate.operator(), reason=reason, now=now_utc())
    click.echo(f"paused {', '.join(names) or 'nothing'}")


@main.command()
@click.argument("jobs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Resume every job.")
@click.option("--catchup", is_flag=True,
              help="Let each job's catchup policy run the fires it missed while paused "
                   "[default: they stay not made].")
@dirs
@pass_settings
def resume(settings: Settings, jobs: tuple[str, ...], every: bool, catchup: bool) -> None:
    """Fire JOB... again. Fires due while paused are not made, unless --catchup."""
    from pipeline import operate

    with open_state(settings, create=True) as store:
        names, loaded = _operated(settings, store, jobs, every)
        made = operate.resume(store, names, jobs=loaded, catchup=catchup, now=now_utc())
    click.echo(f"resumed {', '.join(names) or 'nothing'}"
               + (f"; caught up: {', '.join(made)}" if made else ""))


@main.command()
@click.argument("job")
@dirs
@pass_settings
def reset(settings: Settings, job: str) -> None:
    """Close JOB's open circuit breaker: its failures so far no longer count."""
    from pipeline import operate

    with open_state(settings, create=True) as store:
        loaded = jobs_on_disk(settings)
        operate.known_jobs(store, list(loaded.files.values()) if loaded else [], [job])
        store.reset_circuit(job, now_utc())
    click.echo(f"circuit of {job} closed")


@main.command()
@click.argument("job")
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
    from datetime import timedelta

    from pipeline import operate
    from pipeline.model import iso

    loaded = jobs_on_disk(settings)
    definition = loaded.jobs.get(job) if loaded else None
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
        decisions, state, nodes, now = [], None, [], now_utc()
    else:
        with open_state(settings) as store:
            state = store.job_states().get(job)
            if definition is None and state is None and not problems:
                fail(f"unknown job {job!r} (no file names it and it has no history)")
            decisions = store.decisions(job, since=start, until=end, limit=count)
            nodes = store.nodes(since=(moment or now_utc()) - timedelta(days=30))
            now = store.now()
    if moment is not None:  # the ones nearest the moment
        decisions = sorted(decisions, key=lambda d: abs(
            ((d.fire_time or d.decided_at) - moment).total_seconds()))[:count]
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


@main.command()
@click.argument("job")
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
    from pipeline import operate
    from pipeline.versions import version_of

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
                                      max_parallel=max_parallel, now=now_utc(),
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


@main.command()
@click.argument("run_id")
@click.option("--from", "from_step", metavar="STEP",
              help="Run STEP and what depends on it again; reuse the other steps' outputs.")
@click.option("--failed", is_flag=True,
              help="Run the failed, timed-out and cancelled steps and their dependants again.")
@dirs
@pass_settings
def rerun(settings: Settings, run_id: str, from_step: str | None, failed: bool) -> None:
    """A new run of RUN_ID's job with the same params and fire time (trigger `rerun`), from
    the current job file. Reused steps show `reused`, with their outputs."""
    from pipeline import operate
    from pipeline.errors import UsageError
    from pipeline.versions import version_of

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
        new = operate.rerun(store, record, definition, reuse=reuse, now=now_utc(),
                            version=version)
        click.echo(new)
        if not operate.runner_alive(store, definition):
            [ended] = run_here(settings, store, [new])
            sys.exit(0 if ended.status.value == "succeeded" else 1)


def definition_path(job: Job) -> Any:
    from pathlib import Path

    return Path(job.file)


def run_here(settings: Settings, store: Store, run_ids: list[str]) -> list[RunRecord]:
    """Run queued runs in this process (no daemon would), saying how each ended."""
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

"""The ``pipeline`` command: the one place that wires real objects together.

Settings travel in the click context (``Settings`` on ``ctx.obj``); errors are
``PipelineError``s whose ``exit_code`` becomes the exit status (CONTRACT §4).

The commands live in one module per family, each imported only when one of its commands runs
(click's lazy-loading group, ``LazyGroup``), so ``pipeline --help`` costs little more than
importing click (a benchmark target) and ``validate`` never pays for trio, nor for the store
where there is no state directory (with one, it reads which file holds which job name):

    __init__   the group, Settings, the shared options, error handling, logging
    jobfiles   a job found by name or file; the jobs directory loaded
    state      the state store opened (with recovery), runs by id, the daemon's file
    text       KEY=VALUE and ISO times read; tables, JSON and times in a job's zone printed
    jobs       validate, schema, graph, next, list
    run        run (in the foreground, with its live view)
    runs       runs, show, logs
    daemon     serve
    remote     trigger, stop (through the daemon's API)
    cluster    nodes, migrate
    operate    pause, resume, reset, why, backfill, rerun

This module imports click alone: what it needs beyond that is imported where it is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

import click

from pipeline import __version__

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

T = TypeVar("T")


class Lazy(NamedTuple):
    """A command of the group that is imported only when it runs: ``module:name``, and the
    first paragraph of its docstring, which ``pipeline --help`` shows without importing it
    (``tests/test_cli_lazy.py`` checks the two agree)."""

    path: str
    summary: str


# Every command, by name. A new one is a @click.command() in its family's module, named here
# with the first paragraph of its docstring (tests/test_cli_lazy.py holds the two equal).
COMMANDS = {
    "completion": Lazy("pipeline.cli.shell:completion",
                       "Print the completion script for SHELL: job names, run ids and step ids "
                       "on Tab."),
    "backfill": Lazy("pipeline.cli.operate:backfill",
                     "One run of JOB per scheduled instant in [--from, --to]: the job's own "
                     "schedule, exclusions and zone; trigger `backfill`, `run.fire_time` = the "
                     "instant."),
    "graph": Lazy("pipeline.cli.jobs:graph",
                  "Print a job's step DAG, or with --jobs the graph of which jobs fire after "
                  "which."),
    "list": Lazy("pipeline.cli.jobs:list_",
                 "Every job in the jobs directory: schedule, next fire (in the job's zone), "
                 "last status, circuit breaker, validity, and what a running daemon makes of "
                 "it."),
    "logs": Lazy("pipeline.cli.runs:logs",
                 "Print a run's step logs (one step, or all in file order)."),
    "migrate": Lazy("pipeline.cli.cluster:migrate",
                    "Create or upgrade the store's tables (serve does it too, at start)."),
    "next": Lazy("pipeline.cli.jobs:next_",
                 "Print the next N fire times of JOB (a name or a file), in the job's zone."),
    "nodes": Lazy("pipeline.cli.cluster:nodes",
                  "The nodes of the store: roles, labels, last heartbeat, active runs, "
                  "version, and whether each one's jobs directory matches what the cluster "
                  "fires."),
    "pause": Lazy("pipeline.cli.operate:pause",
                  "Stop firing JOB... on schedule (and on events) until resumed; manual runs "
                  "still work."),
    "rerun": Lazy("pipeline.cli.operate:rerun",
                  "A new run of RUN_ID's job with the same params and fire time (trigger "
                  "`rerun`), from the current job file. Reused steps show `reused`, with their "
                  "outputs."),
    "reset": Lazy("pipeline.cli.operate:reset",
                  "Close JOB's open circuit breaker: its failures so far no longer count."),
    "resume": Lazy("pipeline.cli.operate:resume",
                   "Fire JOB... again. Fires due while paused are not made, unless "
                   "--catchup."),
    "run": Lazy("pipeline.cli.run:run",
                "Run JOB (a name or a file) once, now, in the foreground."),
    "runs": Lazy("pipeline.cli.runs:runs",
                 "Run history, newest first, times in each job's zone."),
    "schema": Lazy("pipeline.cli.jobs:schema",
                   "Print the job file's JSON Schema (or a runner's)."),
    "serve": Lazy("pipeline.cli.daemon:serve",
                  "Run the daemon: load and watch the jobs directory, fire schedules, serve "
                  "HTTP."),
    "show": Lazy("pipeline.cli.runs:show",
                 "One run with its steps (in file order), and the run's own outputs."),
    "stop": Lazy("pipeline.cli.remote:stop",
                 "Ask the daemon to cancel RUN_ID. Exit status: 0 stopping, 1 unknown or not "
                 "running."),
    "trigger": Lazy("pipeline.cli.remote:trigger",
                    "Ask the daemon to run JOB now; print the run id."),
    "validate": Lazy("pipeline.cli.jobs:validate",
                     "Validate job files or directories (default: the jobs directory)."),
    "why": Lazy("pipeline.cli.operate:why",
                "Why JOB ran, or did not: the scheduler's decisions about its fires (made, "
                "skipped, not made, and why), whether a daemon was running, and why the next "
                "fire is when it is."),
}


class Settings:
    """Where the jobs and the state are, and the runner registry once it is loaded."""

    def __init__(self) -> None:
        from pathlib import Path

        self.jobs_dir = Path("jobs.d")
        self.state_dir = Path(".pipeline")
        self.store_url: str | None = None  # a shared store (cluster mode); None: SQLite
        self.plugins = False  # load plug-in runners too (the daemon, or a job that uses one)
        # What the command line set: the command's own copy of an option, given nothing,
        # reads the environment, which must not overrule the group's copy given a value.
        self.given: set[str] = set()
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


def _set(ctx: click.Context, param: click.Parameter, attribute: str, value: Any) -> None:
    """Put an option's value in the Settings, unless it comes from the environment and the
    command line already set that attribute (``pipeline --jobs-dir X list`` under
    ``PIPELINE_JOBS_DIR``: both the group and ``list`` have the option)."""
    from click.core import ParameterSource

    settings = ctx.ensure_object(Settings)
    if ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE:
        settings.given.add(attribute)
    elif attribute in settings.given:
        return
    setattr(settings, attribute, value)


def _set_jobs_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from pathlib import Path

    if value is not None:
        _set(ctx, param, "jobs_dir", Path(value))


def _set_state_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from pathlib import Path

    if value is not None:
        _set(ctx, param, "state_dir", Path(value))


def _set_store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        _set(ctx, param, "store_url", value.strip())


def _set_store_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if not value:
        return
    from pathlib import Path

    from pipeline.errors import UsageError

    try:
        text = Path(value).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the store URL from {value}: "
                         f"{exc.strerror or exc}") from None
    if not text:
        raise UsageError(f"the store file {value} is empty")
    _set(ctx, param, "store_url", text)


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


# What configure_logging last set up in this process (the stream too: click's test runner
# swaps sys.stderr for each command it invokes).
_logging: list[tuple[str, str, object]] = []


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Log lines on stderr: ``text`` and ``json`` for the daemon; ``cli`` for the other
    commands, whose few warnings (a repaired crash) read as their other messages do.

    Asked again for the same lines, it leaves them: each handler loguru adds costs several
    milliseconds (it reads every install scheme's paths), and `run` opens its state twice.
    """
    from loguru import logger

    if _logging == [(level, fmt, sys.stderr)]:
        return
    _logging[:] = [(level, fmt, sys.stderr)]
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


class LazyGroup(click.Group):
    """click's lazy-loading group (its documentation, "Lazily Loading Subcommands"): a command
    named in ``lazy_subcommands`` is imported when it is asked for. Listing the commands
    (``--help``, shell completion) shows each by its summary and imports none of them."""

    def __init__(self, *args: Any, lazy_subcommands: Mapping[str, Lazy] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._lazy_load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _lazy_load(self, cmd_name: str) -> click.Command:
        module, _, name = self.lazy_subcommands[cmd_name].path.partition(":")
        command = getattr(importlib.import_module(module), name)
        if not isinstance(command, click.Command):
            raise ValueError(f"lazy loading {module}:{name} did not give a click command")
        return command

    def listed(self, ctx: click.Context) -> list[tuple[str, click.Command]]:
        """The visible commands, a lazy one as a stand-in that carries only its summary."""
        found = []
        for name in self.list_commands(ctx):
            lazy = self.lazy_subcommands.get(name)
            command = (click.Command(name, help=lazy.summary) if lazy is not None
                       else super().get_command(ctx, name))
            if command is not None and not command.hidden:
                found.append((name, command))
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own, over the stand-ins: the same lines, without importing every command
        commands = self.listed(ctx)
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit))
                                    for name, command in commands])

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(name, help=command.get_short_help_str())
                for name, command in self.listed(ctx) if name.startswith(incomplete)
                ] + click.Command.shell_complete(self, ctx, incomplete)  # the options


# The status a shell gives a process that SIGPIPE ended (128 + 13), what git exits with when
# its reader goes away: a pipeline under `set -o pipefail` still sees the output was cut.
PIPE_CLOSED = 141


class Group(LazyGroup):
    """Turns a PipelineError (or an OSError) into its message and exit status, never a
    traceback, also when a trio nursery wrapped it in an ExceptionGroup on its way out; ends
    quietly when the reader of the output has gone (``pipeline runs | head``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exception, BaseExceptionGroup) as exc:
            if reader_gone(exc):
                quiet_stdout()
                ctx.exit(PIPE_CLOSED)
            errors = known_errors(exc)
            if errors is None:
                raise
            for error in errors:
                text = error_text(error)
                if text:
                    click.echo(text, err=True)
            ctx.exit(max(exit_code(e) for e in errors))


def reader_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a write to a pipe nobody reads any more (alone, or all a group's)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(reader_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def quiet_stdout() -> None:
    """Point standard output at /dev/null, so that the flush at exit has somewhere to put
    what is still buffered instead of failing again ("Exception ignored ... BrokenPipeError",
    and exit status 120)."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's captured output)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


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


@click.group(cls=Group, lazy_subcommands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pipeline")
@dirs
def main() -> None:
    """A declarative pipeline runner: YAML jobs on schedules, run as DAGs of steps."""


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"pipeline: {message}", err=True)
    sys.exit(code)


# -- shell completion (pipeline completion SHELL) ------------------------------------------


def complete_job(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[Any]:
    from pipeline.completion import complete_jobs

    return complete_jobs(ctx.ensure_object(Settings).jobs_dir, incomplete)


def complete_run(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[Any]:
    from pipeline.completion import complete_runs

    settings = ctx.ensure_object(Settings)
    return complete_runs(settings.state_dir, settings.store_url, incomplete)


def complete_step(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[Any]:
    from pipeline.completion import complete_steps

    settings = ctx.ensure_object(Settings)
    return complete_steps(settings.state_dir, settings.store_url, ctx.params.get("run_id"),
                          incomplete)

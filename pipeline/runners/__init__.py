"""Step runners: what a ``uses:`` step calls. A registry dict keyed by name.

A runner is a name, the JSON Schema of its ``with`` arguments and an async function that
receives the resolved arguments and a ``StepContext`` and returns the step's outputs (or None).
Cancellation reaches it as trio cancellation (step timeout, stop, shutdown); it raises
``RunnerError`` to fail the step with a message of its own.

Third parties add runners through the ``pipeline.runners`` entry-point group: the entry point
names a ``Runner`` object (or a zero-argument callable returning one). A plug-in that fails to
import or brings a bad schema is reported, never fatal: the built-ins keep working.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.schema import builtin_runner_schemas

if TYPE_CHECKING:
    import trio

ENTRY_POINT_GROUP = "pipeline.runners"


@dataclass(frozen=True)
class StepContext:
    """What a runner may use besides its arguments."""

    job: str
    run_id: str
    step_id: str
    attempt: int
    env: Mapping[str, str]
    log: Callable[[str], None]  # appends a line to the step's log (secrets masked)
    state_dir: Path
    # Starts another job as a child run; given by whoever runs the engine (None: not possible
    # here, e.g. `pipeline run --dry-run`).
    start_job: Callable[..., Awaitable[Mapping[str, Any]]] | None = None
    cwd: str | None = None  # the step's rendered `cwd`; None: the daemon's working directory
    job_file: str | None = None  # the job's file; `python` puts its directory on sys.path
    grace: float = 10.0  # a runner's own process: SIGTERM to SIGKILL, as the step's `grace`
    hurry: trio.Event | None = None  # set: skip the grace period (a second Ctrl-C)


RunFunction = Callable[[Mapping[str, Any], StepContext], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class Runner:
    name: str
    run: RunFunction
    schema: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


def builtin_runners() -> dict[str, Runner]:
    # Each runner's module is imported when its function is first called: httpx alone costs
    # ~100 ms, and `pipeline --help` or `validate` never call a runner.
    schemas = builtin_runner_schemas()

    def lazy(module: str) -> RunFunction:
        async def run(args: Mapping[str, Any], ctx: StepContext) -> Mapping[str, Any] | None:
            function: RunFunction = importlib.import_module(f"pipeline.runners.{module}").run
            return await function(args, ctx)

        run.__qualname__ = f"{module}.run"
        return run

    described = {
        "http": "make an HTTP request and check its status",
        "python": "call a Python function in a child process",
        "sleep": "wait for a duration",
        "wait_for": "wait until a path exists or a URL answers 2xx",
        "job": "start another job as a child run",
    }
    return {name: Runner(name, lazy(name), schemas.get(name, {}), text)
            for name, text in described.items()}


def load_runners(
    *, plugins: bool = True, entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> tuple[dict[str, Runner], list[str]]:
    """The built-in runners plus those of installed plug-ins, and a message per broken plug-in.

    A plug-in cannot replace a built-in runner: the name clash is reported instead.
    ``entry_points`` replaces the installed ones of the ``pipeline.runners`` group (tests).
    """
    registry = builtin_runners()
    builtins = set(registry)
    problems: list[str] = []
    if not plugins:
        return registry, problems
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry in entry_points:
        where = f"plug-in runner {entry.name!r} ({entry.value})"
        try:
            loaded = entry.load()
            runner = loaded() if not isinstance(loaded, Runner) and callable(loaded) else loaded
        except Exception as exc:  # a broken plug-in must not take the built-ins down
            problems.append(f"{where} failed to load: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(runner, Runner):
            problems.append(f"{where} is not a pipeline.runners.Runner")
            continue
        if runner.name in registry:
            taken = "a built-in runner" if runner.name in builtins else "another plug-in"
            problems.append(f"{where} uses the name of {taken}; ignored")
            continue
        problem = check_schema(runner.schema)
        if problem:
            problems.append(f"{where} has a bad schema: {problem}")
            continue
        registry[runner.name] = runner
    return registry, problems


def check_schema(schema: Mapping[str, Any]) -> str | None:
    """None if ``schema`` is a usable Draft 2020-12 schema, else why not.

    jsonschema-rs checks it against the meta-schema: Python jsonschema would cost every
    command with a plug-in installed ~40 ms of imports.
    """
    import jsonschema_rs

    try:
        json.dumps(schema)
        jsonschema_rs.meta.validate(dict(schema))
    except (TypeError, ValueError, jsonschema_rs.ValidationError) as exc:
        return str(exc).splitlines()[0]
    return None


def schemas_of(registry: Mapping[str, Runner]) -> dict[str, Mapping[str, Any]]:
    return {name: runner.schema for name, runner in registry.items()}

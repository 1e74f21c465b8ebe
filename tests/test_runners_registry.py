"""The runner registry: built-ins, plug-ins from entry points, broken plug-ins kept apart.

Broken plug-ins are built from ``importlib.metadata.EntryPoint`` objects pointing into this
module, so nothing needs installing. The example plug-in in ``tests/plugin`` is used end to end
when it is installed (``pip install --no-deps -e tests/plugin``, done by ``bin/test``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pipeline.errors import JobInvalid, RunnerError
from pipeline.runners import (
    ENTRY_POINT_GROUP,
    Runner,
    StepContext,
    builtin_runners,
    load_runners,
    schemas_of,
)

BUILT_IN = {"http", "python", "sleep", "wait_for", "job"}


async def nothing(args: Mapping[str, Any], ctx: StepContext) -> None:
    return None


# What the fake entry points below point at.
GOOD = Runner("good", nothing, {"type": "object", "properties": {"x": {"type": "string"}}})
BAD_SCHEMA = Runner("bad_schema", nothing, {"type": "object", "properties": {"x": {"type": 5}}})
CLASHING = Runner("http", nothing, {"type": "object"})
NOT_A_RUNNER = {"name": "dict"}


def make_runner() -> Runner:
    return Runner("made", nothing, {"type": "object"})


def failing_factory() -> Runner:
    raise RuntimeError("no licence key")


def entry(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=target, group=ENTRY_POINT_GROUP)


def context(log: list[str]) -> StepContext:
    return StepContext(job="j", run_id="20260101T000000-00000000", step_id="s", attempt=1,
                       env={}, log=log.append, state_dir=Path("/nonexistent"))


def test_builtins_have_their_schemas() -> None:
    registry = builtin_runners()
    assert set(registry) == BUILT_IN
    for name, runner in registry.items():
        assert runner.name == name
        assert runner.description
        jsonschema.Draft202012Validator.check_schema(dict(runner.schema))
        assert runner.schema.get("type") == "object", name


async def test_builtin_runs_through_its_lazy_import() -> None:
    assert await builtin_runners()["sleep"].run({"duration": 0}, context([])) is None


def test_broken_plugins_are_reported_and_the_rest_still_load() -> None:
    here = __name__
    registry, problems = load_runners(entry_points=[
        entry("missing", "no_such_plugin_module:runner"),
        entry("bad_schema", f"{here}:BAD_SCHEMA"),
        entry("http", f"{here}:CLASHING"),
        entry("dict", f"{here}:NOT_A_RUNNER"),
        entry("factory", f"{here}:failing_factory"),
        entry("good", f"{here}:GOOD"),
        entry("made", f"{here}:make_runner"),
        entry("good_again", f"{here}:GOOD"),
    ])
    assert set(registry) == BUILT_IN | {"good", "made"}
    assert registry["http"] is not CLASHING
    assert problems == [
        "plug-in runner 'missing' (no_such_plugin_module:runner) failed to load: "
        "ModuleNotFoundError: No module named 'no_such_plugin_module'",
        f"plug-in runner 'bad_schema' ({here}:BAD_SCHEMA) has a bad schema: "
        "5 is not valid under any of the schemas listed in the 'anyOf' keyword",
        f"plug-in runner 'http' ({here}:CLASHING) uses the name of a built-in runner; ignored",
        f"plug-in runner 'dict' ({here}:NOT_A_RUNNER) is not a pipeline.runners.Runner",
        f"plug-in runner 'factory' ({here}:failing_factory) failed to load: "
        "RuntimeError: no licence key",
        f"plug-in runner 'good_again' ({here}:GOOD) uses the name of another plug-in; ignored",
    ]


def test_plugins_can_be_switched_off() -> None:
    registry, problems = load_runners(plugins=False,
                                      entry_points=[entry("missing", "no_such_module:x")])
    assert set(registry) == BUILT_IN and problems == []


# -- the example plug-in, installed ---------------------------------------------------------

needs_plugin = pytest.mark.skipif(
    importlib.util.find_spec("pipeline_echo") is None,
    reason="the example plug-in is not installed: pip install --no-deps -e tests/plugin")


@needs_plugin
async def test_installed_plugin_is_found_through_its_entry_point() -> None:
    registry, problems = load_runners()
    assert "echo" in registry
    assert not [p for p in problems if "echo" in p]
    log: list[str] = []
    out = await registry["echo"].run({"message": "hi", "times": 2, "upper": True}, context(log))
    assert out == {"message": "HI"}
    assert log == ["hi", "hi"]
    with pytest.raises(RunnerError, match="times must be a whole number"):
        await registry["echo"].run({"message": "hi", "times": "lots"}, context(log))


@needs_plugin
async def test_installed_plugin_end_to_end(tmp_path: Path) -> None:
    """Validated with its own schema, then run by the engine like a built-in."""
    from pipeline.engine import run_job
    from pipeline.events import Event, StepFinished
    from pipeline.spec import load_job

    registry, _ = load_runners()
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - id: hello\n    uses: echo\n    with: {message: hi, times: 0}\n")
    with pytest.raises(JobInvalid) as info:
        load_job(bad, runner_schemas=schemas_of(registry))
    assert [p.line for p in info.value.problems] == [4]

    good = tmp_path / "good.yaml"
    good.write_text("steps:\n  - id: hello\n    uses: echo\n"
                    "    with: {message: 'from ${{ job.name }}', upper: true}\n")
    job = load_job(good, runner_schemas=schemas_of(registry))
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    result = await run_job(job, run_id="20260101T000000-0000abcd", state_dir=tmp_path / "state",
                           emit=emit, runners=registry)
    assert str(result.status) == "succeeded"
    finished = [e for e in events if isinstance(e, StepFinished)]
    assert dict(finished[0].outputs) == {"message": "FROM GOOD"}

"""``uses: python``: real child processes calling functions from a module next to the job."""

from __future__ import annotations

import json
import os
import statistics
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline.errors import RunnerError
from pipeline.runners import StepContext
from pipeline.runners import python as python_runner

FUNCTIONS = '''
import asyncio, datetime, os, signal, sys, time

def add(a, b, *, scale=1):
    return {"sum": (a + b) * scale}

def nothing():
    print("side effect only")

def chatty():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    sys.stdout.write("no newline at the end")
    return {"ok": True}

def raises():
    raise ValueError("bad input: 42")

def exits():
    os._exit(3)

def sys_exit():
    sys.exit(4)

def blocks(pid_file):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)

def ignores_sigterm(pid_file):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    blocks(pid_file)

def returns_int():
    return 42

def returns_object():
    return {"when": datetime.datetime(2026, 1, 1)}

def returns_nested():
    return {"list": [1, 2], "map": {"a": None}, "text": "é"}

async def async_add(a, b):
    await asyncio.sleep(0.01)
    return {"sum": a + b}

def where():
    return {"cwd": os.getcwd(), "run": os.environ.get("PIPELINE_RUN_ID"),
            "secret": os.environ.get("API_KEY")}

def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}

class Tasks:
    @staticmethod
    def nested():
        return {"nested": True}

not_callable = 3
'''


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "jobs.d"
    folder.mkdir()
    # A name no other test module uses: the child imports it from the job's directory.
    (folder / "pyrunner_funcs.py").write_text(textwrap.dedent(FUNCTIONS))
    (folder / "job.yaml").write_text("steps: []\n")
    return folder


def context(job_dir: Path, log: list[str], **changes: Any) -> StepContext:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PIPELINE_RUN_ID": "20260101T000000-00000000", "API_KEY": "k"}
    fields: dict[str, Any] = dict(
        job="j", run_id="20260101T000000-00000000", step_id="s", attempt=1, env=env,
        log=log.append, state_dir=job_dir / "state", job_file=str(job_dir / "job.yaml"),
        grace=2.0)
    fields.update(changes)
    return StepContext(**fields)


async def call(job_dir: Path, function: str, log: list[str] | None = None,
               **args: Any) -> Mapping[str, Any] | None:
    ctx = context(job_dir, log if log is not None else [])
    return await python_runner.run({"callable": f"pyrunner_funcs:{function}", **args}, ctx)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


# -- results ----------------------------------------------------------------------------------


async def test_returned_mapping_becomes_outputs(job_dir: Path) -> None:
    assert await call(job_dir, "add", args=[1, 2], kwargs={"scale": 10}) == {"sum": 30}


async def test_none_means_no_outputs(job_dir: Path) -> None:
    log: list[str] = []
    assert await call(job_dir, "nothing", log) is None
    assert log == ["side effect only"]


async def test_async_function(job_dir: Path) -> None:
    assert await call(job_dir, "async_add", args=[2, 3]) == {"sum": 5}


async def test_nested_values_come_back_as_json_values(job_dir: Path) -> None:
    assert await call(job_dir, "returns_nested") == {
        "list": [1, 2], "map": {"a": None}, "text": "é"}


async def test_qualified_name(job_dir: Path) -> None:
    assert await call(job_dir, "Tasks.nested") == {"nested": True}


async def test_arguments_cross_as_json(job_dir: Path) -> None:
    import datetime

    out = await call(job_dir, "echo", args=[datetime.date(2026, 5, 1), (1, 2)],
                     kwargs={"m": {"x": 1.5}})
    assert out == {"args": ["2026-05-01", [1, 2]], "kwargs": {"m": {"x": 1.5}}}
    with pytest.raises(RunnerError, match="cannot be passed as JSON: set is not JSON"):
        await call(job_dir, "echo", args=[{1, 2}])


async def test_output_goes_to_the_step_log(job_dir: Path) -> None:
    log: list[str] = []
    assert await call(job_dir, "chatty", log) == {"ok": True}
    assert sorted(log) == sorted(["to stdout", "to stderr", "no newline at the end"])


async def test_environment_and_working_directory(job_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ctx = context(job_dir, [], cwd=str(work))
    out = await python_runner.run({"callable": "pyrunner_funcs:where"}, ctx)
    assert out == {"cwd": str(work), "run": "20260101T000000-00000000", "secret": "k"}


# -- failures ---------------------------------------------------------------------------------


async def test_exception_fails_with_type_and_message(job_dir: Path) -> None:
    log: list[str] = []
    with pytest.raises(RunnerError) as info:
        await call(job_dir, "raises", log)
    assert str(info.value) == "ValueError: bad input: 42"
    assert log[0] == "Traceback (most recent call last):"
    assert "ValueError: bad input: 42" in log


async def test_sys_exit_is_an_error_of_the_function(job_dir: Path) -> None:
    with pytest.raises(RunnerError, match=r"^SystemExit: 4$"):
        await call(job_dir, "sys_exit")


async def test_os_exit_fails_the_step_only(job_dir: Path) -> None:
    with pytest.raises(RunnerError) as info:
        await call(job_dir, "exits")
    assert str(info.value) == "the function's process exited with status 3"
    assert await call(job_dir, "add", args=[1, 1]) == {"sum": 2}  # and we carry on


@pytest.mark.parametrize(("function", "message"), [
    ("returns_int", "the function returned int, expected a mapping or None"),
    ("returns_object", "the function returned a value that is not JSON: "
                       "Object of type datetime is not JSON serializable"),
    ("not_callable", "pyrunner_funcs:not_callable is not callable (it is int)"),
    ("missing", "pyrunner_funcs has no attribute missing"),
])
async def test_bad_results_and_bad_callables(job_dir: Path, function: str, message: str) -> None:
    with pytest.raises(RunnerError) as info:
        await call(job_dir, function)
    assert str(info.value) == message


async def test_module_that_does_not_import(job_dir: Path) -> None:
    log: list[str] = []
    ctx = context(job_dir, log)
    with pytest.raises(RunnerError) as info:
        await python_runner.run({"callable": "no_such_module_here:f"}, ctx)
    assert str(info.value) == ("cannot import no_such_module_here: ModuleNotFoundError: "
                               "No module named 'no_such_module_here'")
    assert any("Traceback" in line for line in log)


async def test_bad_arguments(job_dir: Path) -> None:
    ctx = context(job_dir, [])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"callable": "nocolon"}, "callable must be"),
        ({"callable": "m:f", "args": "x"}, "args must be a list"),
        ({"callable": "m:f", "kwargs": [1]}, "kwargs must be a mapping"),
    ]
    for args, message in cases:
        with pytest.raises(RunnerError, match=message):
            await python_runner.run(args, ctx)


# -- killing ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_function_that_blocks_is_killed_by_the_timeout(job_dir: Path) -> None:
    pid_file = job_dir / "pid"
    start = time.monotonic()
    with trio.move_on_after(1.0) as scope:
        await call(job_dir, "blocks", args=[str(pid_file)])
    assert scope.cancelled_caught
    pid = int(pid_file.read_text())
    assert not alive(pid)
    assert time.monotonic() - start < 2.5


@pytest.mark.slow
async def test_function_that_ignores_sigterm_is_killed_after_grace(job_dir: Path) -> None:
    pid_file = job_dir / "pid"
    ctx = context(job_dir, [], grace=0.3)
    with trio.move_on_after(1.0) as scope:
        await python_runner.run({"callable": "pyrunner_funcs:ignores_sigterm",
                                 "args": [str(pid_file)]}, ctx)
    assert scope.cancelled_caught
    assert not alive(int(pid_file.read_text()))


# -- cost -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_start_up_cost(job_dir: Path) -> None:
    """A call costs about one interpreter start; print the median for the docs."""
    times = []
    for _ in range(5):
        began = time.perf_counter()
        await call(job_dir, "add", args=[1, 2])
        times.append(time.perf_counter() - began)
    median = statistics.median(times)
    print(json.dumps({"python_runner_median_s": round(median, 4)}))
    assert median < 2.0

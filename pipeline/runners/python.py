"""``uses: python`` — call ``package.module:function`` in a child Python process.

Never in the daemon: a function that blocks forever, leaks memory, changes the working directory
or calls ``os._exit`` would take every other run down with it. The child (``_child.py``, run by
the daemon's own interpreter) is a step process like any other: its own process group, stopped
through ``process.run_group`` on timeout, stop or shutdown, its output in the step log. What
crosses between the two is JSON: the arguments in, the returned mapping out, through files in a
private temporary directory (not stdout, which belongs to the function's prints).

The child finds the function's module on ``sys.path`` as Python would, with the step's working
directory and the job file's directory put in front, then ``PYTHONPATH`` from the step's env.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from pipeline import process
from pipeline.errors import RunnerError
from pipeline.runners import StepContext

CHILD = Path(__file__).with_name("_child.py")
CALLABLE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
LINE_CAP = 64 * 1024  # a line longer than this is logged in pieces
RESULT_CAP = 16 * 1024 * 1024


async def run(args: Mapping[str, Any], ctx: StepContext) -> Mapping[str, Any] | None:
    spec = args.get("callable")
    if not isinstance(spec, str) or not CALLABLE.match(spec):
        raise RunnerError(f'callable must be "package.module:function", not {spec!r}')
    call_args = args.get("args")
    if call_args is None:
        call_args = []
    if not isinstance(call_args, list | tuple):
        raise RunnerError(f"args must be a list, not {type(call_args).__name__}")
    kwargs = args.get("kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise RunnerError("kwargs must be a mapping of names to values")
    try:
        request = json.dumps({"callable": spec, "args": list(call_args), "kwargs": dict(kwargs),
                              "path": import_path(ctx)}, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RunnerError(f"the arguments cannot be passed as JSON: {exc}") from None

    with tempfile.TemporaryDirectory(prefix="pipeline-python-") as tmp:
        call_file, result_file = Path(tmp, "call.json"), Path(tmp, "result.json")
        _write(call_file, request)
        argv = [sys.executable or "python3", "-P", str(CHILD), str(call_file), str(result_file)]
        # Unbuffered, so the function's prints reach the log as they happen, not at its end.
        env = {**ctx.env, "PYTHONUNBUFFERED": "1"}
        lines = LineSplitter(ctx.log)
        try:
            exit = await process.run_group(argv, env=env, cwd=ctx.cwd, output=lines.feed,
                                           grace=ctx.grace, hurry=ctx.hurry)
        except OSError as exc:
            # Names the missing file: the interpreter, or the step's cwd.
            raise RunnerError(process.start_failure(exc, argv[0], ctx.cwd)) from None
        finally:
            lines.flush()
        outcome = _read_outcome(result_file)
    if outcome is None:
        if exit.signal is not None:
            raise RunnerError(f"the function's process was {exit.describe()}")
        raise RunnerError(f"the function's process exited with status {exit.exit_code}"
                          + (" without a result" if exit.ok else ""))
    if not outcome.get("ok"):
        raise RunnerError(str(outcome.get("error") or "the function failed"))
    value = outcome.get("value")
    return value if isinstance(value, dict) else None


def import_path(ctx: StepContext) -> list[str]:
    """Where the child looks first for the function's module: the step's cwd, the job's dir."""
    path = [os.path.abspath(ctx.cwd or os.curdir)]
    if ctx.job_file:
        path.append(os.path.dirname(os.path.abspath(ctx.job_file)))
    return path


# Files in a private temporary directory, a few bytes to a few KiB: writing and reading them
# from the trio thread costs less than handing them to a worker thread.


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _read_outcome(path: Path) -> dict[str, Any] | None:
    """The child's outcome record; None if it wrote none."""
    try:
        with path.open("rb") as f:
            outcome = json.loads(f.read(RESULT_CAP))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RunnerError(f"the function's result could not be read: {exc}") from None
    if not isinstance(outcome, dict):
        raise RunnerError("the function's result could not be read")
    return outcome


def _jsonable(value: Any) -> Any:
    """What ``json.dumps`` cannot do alone: YAML's dates and read-only mappings."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class LineSplitter:
    """Feeds raw output to ``log`` one line at a time (the step log takes whole lines)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        *complete, self.pending = data.split(b"\n")
        for line in complete:
            self.log(line.decode(errors="replace"))
        while len(self.pending) >= LINE_CAP:
            self.log(self.pending[:LINE_CAP].decode(errors="replace"))
            self.pending = self.pending[LINE_CAP:]

    def flush(self) -> None:
        if self.pending:
            self.log(self.pending.decode(errors="replace"))
            self.pending = b""

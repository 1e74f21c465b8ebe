"""``pipeline run --dry-run``: the order steps would run in, with their resolved commands.

Nothing is started and nothing is recorded. Values that only exist at run time (step outputs,
statuses, secrets) are shown as the expression that will give them.
"""

from __future__ import annotations

import graphlib
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from pipeline import expr
from pipeline.errors import ExpressionError
from pipeline.model import Job, Step, StepKind, thaw


def waves(steps: Sequence[Step]) -> list[list[Step]]:
    """Steps grouped by when they can start: each wave needs only earlier waves."""
    by_id = {s.id: s for s in steps}
    sorter = graphlib.TopologicalSorter({s.id: [n for n in s.needs if n in by_id]
                                         for s in steps})
    sorter.prepare()
    result = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=[s.id for s in steps].index)
        result.append([by_id[sid] for sid in ready])
        sorter.done(*ready)
    return result


class Later:
    """A value only the run will know (a step's outputs, its status): shown as ``<path>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, key: str) -> Later:
        if key.startswith("_"):
            raise AttributeError(key)
        return Later(f"{self.path}.{key}")

    def __getitem__(self, key: str) -> Later:
        return Later(f"{self.path}.{key}")

    def __str__(self) -> str:
        return f"<{self.path}>"


def _show(text: str, context: Mapping[str, Any], *, script: bool = False) -> str:
    try:
        if script:
            return expr.render_script(text, context)
        return expr.render(text, context)
    except ExpressionError as exc:
        return f"{text}    # {exc}"


def describe(step: Step, context: Mapping[str, Any]) -> str:
    if step.kind is StepKind.RUN:
        assert step.run is not None
        return _show(step.run, context, script=True)
    if step.kind is StepKind.EXEC:
        return shlex.join(_show(a, context) for a in step.exec)
    try:
        args = expr.render_value(step.with_, context)
    except ExpressionError:
        args = step.with_
    return f"uses {step.uses} with {dict(args)}"


def items_of(step: Step, context: Mapping[str, Any]) -> list[Any] | None:
    """A for_each step's items, if the plan can know them (a list, or an expression over
    params and env); None when only the run will (an expression over steps' outputs)."""
    if isinstance(step.for_each, str):
        try:
            items = expr.evaluate(step.for_each, context)
        except ExpressionError:
            return None
        return list(items) if isinstance(items, list | tuple) else None
    return list(thaw(step.for_each or ()))


def _item_text(item: Any) -> str:
    return item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)


def _print_command(step: Step, context: Mapping[str, Any], *, out: TextIO,
                   indent: str = "        ") -> None:
    for line in describe(step, context).splitlines() or [""]:
        print(f"{indent}{line}", file=out)


def print_plan(job: Job, params: Mapping[str, Any], *, out: TextIO) -> None:
    context = {
        "params": dict(params), "env": dict(job.env), "job": {"name": job.name},
        "run": {"id": "(run id)", "trigger": "manual", "fire_time": ""},
        "secrets": {name: "***" for name in job.secrets},
        "steps": Later("steps"), "success": lambda: True, "failure": lambda: False,
        "always": lambda: True, "cancelled": lambda: False,
    }
    print(f"job {job.name} ({job.file})", file=out)
    if params:
        print("params: " + ", ".join(f"{k}={v!r}" for k, v in params.items()), file=out)
    sections = [("steps", job.steps), ("on_success", job.on_success),
                ("on_failure", job.on_failure), ("finally", job.finally_)]
    for title, steps in sections:
        if not steps:
            continue
        print(f"\n{title}:", file=out)
        for number, wave in enumerate(waves(steps), 1):
            for step in wave:
                extra = []
                if step.needs:
                    extra.append("needs " + ", ".join(step.needs))
                if step.if_ != "success()":
                    extra.append(f"if {step.if_}")
                if isinstance(step.for_each, str):
                    extra.append(f"for each of {step.for_each}")
                elif step.for_each is not None:
                    extra.append(f"for each of {json.dumps(thaw(step.for_each), default=str)}")
                if step.timeout:
                    extra.append(f"timeout {step.timeout:g}s")
                print(f"  [{number}] {step.id}" + (f"  ({'; '.join(extra)})" if extra else ""),
                      file=out)
                if step.for_each is None:
                    _print_command(step, context, out=out)
                    continue
                items = items_of(step, context)
                if items is None:  # one command, with the item as the run will give it
                    _print_command(step, {**context, "item": Later("item")}, out=out)
                    continue
                for index, item in enumerate(items):
                    print(f"        {step.id}[{index}] (item: {_item_text(item)})", file=out)
                    _print_command(step, {**context, "item": item}, out=out,
                                   indent="          ")

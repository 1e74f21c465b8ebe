"""What the status pages draw of a job, computed from records: its duration chart, its next
fires, its parameter form and its file; and the words every drawing shares (how long something
took, the hook lists' names). A run's timeline is ``timeline``'s, its graph ``rungraph``'s.

Pure functions of plain values (records, the job, the time now); the routes in ``site`` read
the store and the files, and the templates only place what these return. Positions are
percentages, computed here so that a page needs no script to be drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from pipeline import schedule_words, triggers
from pipeline.errors import Problem
from pipeline.model import Job, ParamType
from pipeline.runrecords import RunRecord

# The lists of steps that run after the main ones, as the job file names them and the pages say
# them (a timeline row's "(on success)", a caption over the graph's column).
HOOK_LISTS = (("on_success", "on success"), ("on_failure", "on failure"), ("finally", "finally"))


def took(seconds: float) -> str:
    """How long a stretch took, in the pages' titles: ``250 ms``, ``4.2 s``, ``3 min 07 s``,
    ``2 h 05 min``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# -- a job's history ----------------------------------------------------------------------------

def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Column:
    x: float
    width: float
    height: float  # of 100
    status: str
    title: str
    run_id: str


@dataclass(frozen=True)
class Chart:
    columns: tuple[Column, ...]
    top_s: float  # what the chart's full height stands for
    p50_s: float
    p95_s: float
    p50_y: float  # of 100, from the top
    p95_y: float
    runs: int


def durations(runs: Sequence[RunRecord]) -> Chart | None:
    """Each finished run's duration (``runs`` newest first) as a column, oldest on the left,
    with the p50 and p95 of them; None when no run has a duration."""
    timed = [r for r in reversed(runs) if r.duration_s is not None and r.started_at]
    if not timed:
        return None
    values = [r.duration_s or 0.0 for r in timed]
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    top = max(max(values), 0.001) * 1.1
    width = 100 / len(timed)
    columns = tuple(Column(
        round(i * width, 3), round(width * 0.8, 3), round(max(d / top * 100, 0.8), 3),
        str(r.status), f"{r.id}: {took(d)}, {r.status}", r.id)
        for i, (r, d) in enumerate(zip(timed, values, strict=True)))
    return Chart(columns, top, p50, p95, round(100 - p50 / top * 100, 3),
                 round(100 - p95 / top * 100, 3), len(timed))


@dataclass(frozen=True)
class Fire:
    at: datetime
    note: str | None


def next_fires(job: Job, after: datetime, n: int = 10) -> list[Fire]:
    """The job's next ``n`` fires after ``after``, each with what the clocks do before it
    (``schedule_words.clock_change``) in the zone of the job's first schedule."""
    timed = [s for s in job.schedules if s.kind.timed]  # events have no fire times
    if not timed:
        return []
    zone: ZoneInfo = timed[0].timezone
    fires = triggers.next_fires(timed, after, n)
    found, previous = [], after
    for fire in fires:
        found.append(Fire(fire, schedule_words.clock_change(fire, previous, zone)))
        previous = fire
    return found


# -- a job's parameters and file ----------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One input of the "run with parameters" form."""

    name: str
    kind: str  # select, checkbox, integer, number, text
    type: str
    required: bool
    description: str
    value: str = ""  # a text input's default
    checked: bool = False
    options: tuple[tuple[str, str, bool], ...] = ()  # (JSON value, label, selected)


def param_fields(job: Job) -> list[Field]:
    """The job's ``params`` as form inputs: an enum as a select, a boolean as a checkbox,
    numbers as number inputs; defaults filled in."""
    fields = []
    for p in job.params.values():
        required = p.required and not p.has_default
        if p.enum is not None:
            options = tuple((json.dumps(v), str(v), p.has_default and v == p.default)
                            for v in p.enum)
            if not any(selected for _, _, selected in options):
                options = (("", "— choose —", True), *options)
            fields.append(Field(p.name, "select", str(p.type), required, p.description,
                                options=options))
        elif p.type is ParamType.BOOLEAN:
            fields.append(Field(p.name, "checkbox", str(p.type), False, p.description,
                                checked=bool(p.default)))
        else:
            kind = {ParamType.INTEGER: "integer", ParamType.NUMBER: "number"}.get(p.type, "text")
            value = "" if not p.has_default or p.default is None else str(p.default)
            fields.append(Field(p.name, kind, str(p.type), required, p.description, value))
    return fields


@dataclass(frozen=True)
class SourceLine:
    number: int
    text: str
    errors: tuple[Problem, ...] = field(default_factory=tuple)


def source_lines(text: str, problems: Sequence[Problem]) -> list[SourceLine]:
    """The job file's lines, each with the problems found at it (a problem past the end, or
    without a line, goes to the last line)."""
    lines = text.splitlines() or [""]
    at: dict[int, list[Problem]] = {}
    for problem in problems:
        line = problem.line if 1 <= (problem.line or 0) <= len(lines) else len(lines)
        at.setdefault(line, []).append(problem)
    return [SourceLine(number, line, tuple(at.get(number, ())))
            for number, line in enumerate(lines, start=1)]

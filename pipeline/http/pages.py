"""What the status pages draw, computed from records: a run's timeline and graph, a job's
strip of runs, its duration chart, its next fires, its parameter form and its file.

Pure functions of plain values (records, the job, the time now); the routes in ``app`` read
the store and the files, and the templates only place what these return. Positions are
percentages or SVG user units, computed here so that a page needs no script to be drawn.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import dag, schedule_words, triggers
from pipeline.errors import Problem
from pipeline.model import EMPTY, Job, ParamType, StepStatus
from pipeline.runrecords import RunRecord, StepRecord, in_file_order

HOOK_LISTS = (("on_success", "on success"), ("on_failure", "on failure"), ("finally", "finally"))
_ATTEMPT = re.compile(r"\[pipeline\] attempt (\d+) of \d+ at (\S+)")
_RETRYING = re.compile(r"; retrying in ([0-9.]+)s$")


# -- a run's timeline ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    """One stretch of a timeline row, in percent of the axis."""

    left: float
    width: float
    kind: str  # a status (succeeded, failed, running, ...), "queued" or "wait"
    title: str


@dataclass(frozen=True)
class Row:
    label: str
    status: str
    bars: tuple[Bar, ...]
    note: str = ""  # for a row without bars: why (skipped, pending)
    anchor: str | None = None  # the step's log on the page
    items: tuple[Row, ...] = ()  # a for_each step's items
    hook: str | None = None  # the hook list the step belongs to


@dataclass(frozen=True)
class Tick:
    left: float
    label: str


@dataclass(frozen=True)
class Timeline:
    rows: tuple[Row, ...]
    ticks: tuple[Tick, ...]
    span_s: float
    now: float | None  # where "now" is on the axis, for an active run


@dataclass(frozen=True)
class Attempt:
    number: int
    start: datetime
    end: datetime | None  # None: still running
    wait_before: float  # seconds of retry delay before it


def attempt_markers(text: str) -> list[str]:
    """The ``[pipeline]`` lines of a step's log (what the engine writes between attempts)."""
    found = []
    start = text.find("[pipeline] ")
    while start != -1:
        end = text.find("\n", start)
        line = text[start:end if end != -1 else len(text)]
        if start == 0 or text[start - 1] == "\n":
            found.append(line)
        start = text.find("[pipeline] ", start + 11)
    return found


def attempts(step: StepRecord, markers: Sequence[str] | None) -> list[Attempt]:
    """The step's attempts and the retry waits between them, from its record and the marker
    lines of its log; one attempt covering the whole step when the markers do not say more
    (a log from before attempts carried their time, or whose middle was dropped)."""
    if step.started_at is None:
        return []
    starts: list[tuple[int, datetime, float]] = []
    delay = 0.0
    for line in markers or ():
        retry = _RETRYING.search(line)
        if retry:
            delay = float(retry.group(1))
            continue
        found = _ATTEMPT.fullmatch(line)
        if found:
            try:
                moment = datetime.fromisoformat(found.group(2))
            except ValueError:
                continue
            if moment.utcoffset() is not None:
                starts.append((int(found.group(1)), moment, delay))
            delay = 0.0
    expected = list(range(2, step.attempt + 1))
    if [n for n, _, _ in starts] != expected:
        return [Attempt(step.attempt or 1, step.started_at, step.finished_at, 0.0)]
    found_attempts = []
    begin, number, wait = step.started_at, 1, 0.0
    for next_number, next_start, next_wait in starts:
        end = max(next_start - timedelta(seconds=next_wait), begin)
        found_attempts.append(Attempt(number, begin, end, wait))
        begin, number, wait = next_start, next_number, next_wait
    found_attempts.append(Attempt(number, begin, step.finished_at, wait))
    return found_attempts


def _nice_step(span: float, most: int = 6) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                 10800, 21600, 43200, 86400):
        if span / step <= most:
            return step
    return 86400 * math.ceil(span / 86400 / most)


def _offset_label(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"+{seconds:g} s"
    if seconds < 3600:
        return f"+{seconds / 60:g} min"
    if seconds < 86400:
        return f"+{seconds / 3600:g} h"
    return f"+{seconds / 86400:g} d"


def _took(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _Axis:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.span = max((end - start).total_seconds(), 0.001)

    def at(self, moment: datetime) -> float:
        return min(max((moment - self.start).total_seconds() / self.span * 100, 0.0), 100.0)

    def bar(self, start: datetime, end: datetime, kind: str, title: str) -> Bar:
        left = self.at(start)
        # Every stretch stays visible, however short: at least a sliver of the axis.
        width = max(self.at(end) - left, 0.4)
        return Bar(round(min(left, 100 - width), 3), round(width, 3), kind, title)


def _step_row(step: StepRecord, axis: _Axis, now: datetime,
              markers: Mapping[str, Sequence[str]], label: str, hook: str | None) -> Row:
    status = str(step.status)
    bars = []
    if step.waited_from is not None:  # for its pool's slots
        until = step.started_at or now
        bars.append(axis.bar(step.waited_from, until, "pool",
                             f"waited {_took((until - step.waited_from).total_seconds())} "
                             "for a pool slot" + ("" if step.started_at else " so far")))
    if step.started_at is None:
        return Row(label, status, tuple(bars), note=step.error or status, hook=hook)
    tries = attempts(step, markers.get(step.id))
    for index, attempt in enumerate(tries):
        last = index == len(tries) - 1
        if attempt.wait_before > 0:
            wait_start = attempt.start - timedelta(seconds=attempt.wait_before)
            bars.append(axis.bar(wait_start, attempt.start, "wait",
                                 f"waited {_took(attempt.wait_before)} before attempt "
                                 f"{attempt.number}"))
        end = attempt.end or now
        kind = status if last else "failed"
        what = f"attempt {attempt.number}" if len(tries) > 1 or attempt.number > 1 else label
        bars.append(axis.bar(attempt.start, end, kind,
                             f"{what}: {_took((end - attempt.start).total_seconds())}, "
                             f"{kind.replace('_', ' ')}" + (" so far" if attempt.end is None
                                                            else "")))
    return Row(label, status, tuple(bars), anchor=f"log-{step.id}" if step.log else None,
               hook=hook)


def _hook_of(document: Mapping[str, Any]) -> dict[str, str]:
    hooks = {}
    for key, words in HOOK_LISTS:
        for entry in document.get(key) or ():
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                hooks[entry["id"]] = words
    return hooks


def timeline(run: RunRecord, now: datetime,
             markers: Mapping[str, Sequence[str]] = EMPTY,
             pending: Sequence[str] = ()) -> Timeline | None:
    """The run on one time axis: its wait in the queue, then each step's attempts and retry
    waits (``markers``: the marker lines of the logs of steps that were retried), a for_each
    step with its items grouped under it, and the steps still ``pending``. None for a run that
    never started a step and never waited (skipped at once)."""
    start = run.queued_at or run.started_at
    if start is None:
        return None
    times = [t for s in run.steps for t in (s.started_at, s.finished_at) if t is not None]
    end = run.finished_at or (max([now, *times]) if not run.status.finished else None)
    if end is None:
        end = max([start, run.started_at or start, *times])
    if end <= start and not run.steps:
        return None
    axis = _Axis(start, end)
    hooks = _hook_of(run.document or EMPTY)
    rows: list[Row] = []
    if run.queued_at is not None and (run.started_at or not run.status.finished):
        until = run.started_at or end
        rows.append(Row("queued", "queued", (axis.bar(
            run.queued_at, until, "queued",
            f"queued for {_took((until - run.queued_at).total_seconds())}"),)))
    ordered = in_file_order(run)
    items: dict[str, list[StepRecord]] = {}
    for step in ordered:
        base, dot, _ = step.id.partition(".")
        if dot:
            items.setdefault(base, []).append(step)
    for step in ordered:
        if "." in step.id:
            continue
        row = _step_row(step, axis, now, markers, step.id, hooks.get(step.id))
        if step.id in items:
            children = tuple(
                _step_row(item, axis, now, markers, _item_label(item), None)
                for item in items[step.id])
            row = Row(row.label, row.status, row.bars, row.note, row.anchor, children,
                      row.hook)
        rows.append(row)
    rows += [Row(sid, "pending", (), note="not started yet") for sid in pending]
    step_s = _nice_step(axis.span)
    ticks = tuple(Tick(round(i * step_s / axis.span * 100, 3), _offset_label(i * step_s))
                  for i in range(int(axis.span / step_s) + 1))
    return Timeline(tuple(rows), ticks, axis.span,
                    axis.at(now) if not run.status.finished else None)


def _item_label(item: StepRecord) -> str:
    index = item.id.rpartition(".")[2]
    if item.item is None:
        return f"item {index}"
    try:
        value = json.loads(item.item)
    except ValueError:
        value = item.item
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"{index}: {text[:40]}{'…' if len(text) > 40 else ''}"


# -- a run's graph ------------------------------------------------------------------------------

NODE_W, NODE_H, GAP_X, GAP_Y, PAD, HEAD = 140, 34, 36, 12, 10, 20


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    status: str
    x: float
    y: float
    title: str
    anchor: str | None


@dataclass(frozen=True)
class Edge:
    path: str
    dashed: bool = False


@dataclass(frozen=True)
class Caption:
    x: float
    text: str


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    captions: tuple[Caption, ...]
    width: float
    height: float
    node_w: float = NODE_W
    node_h: float = NODE_H


def _needs_of(entries: Any) -> dict[str, list[str]]:
    needs: dict[str, list[str]] = {}
    for entry in entries or ():
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            wanted = entry.get("needs") or []
            needs[entry["id"]] = [n for n in wanted if isinstance(n, str)] if isinstance(
                wanted, list | tuple) else []
    return needs


def _ordered_layers(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """``dag.layers``, each layer ordered by where the steps it needs are drawn (fewer
    crossing edges), file order breaking ties."""
    try:
        found = dag.layers(needs)
    except Exception:  # a stored document with a cycle cannot come from a valid file
        found = [list(needs)]
    row: dict[str, float] = {}
    ordered: list[list[str]] = []
    for layer in found:
        def weight(sid: str) -> float:
            placed = [row[n] for n in needs.get(sid, ()) if n in row]
            return sum(placed) / len(placed) if placed else math.inf

        layer = sorted(layer, key=lambda sid: (weight(sid) if weight(sid) != math.inf
                                               else len(row) + layer.index(sid)))
        for index, sid in enumerate(layer):
            row[sid] = index
        ordered.append(layer)
    return ordered


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    bend = max((x2 - x1) / 2, 12)
    return f"M{x1:g} {y1:g}C{x1 + bend:g} {y1:g} {x2 - bend:g} {y2:g} {x2:g} {y2:g}"


def graph(document: Mapping[str, Any], statuses: Mapping[str, str],
          counts: Mapping[str, int] = EMPTY) -> Graph | None:
    """The run's steps laid out left to right in graphlib's generations, each coloured by
    ``statuses`` (id -> status), a for_each step marked with its item count (``counts``);
    hook lists follow in their own columns, joined to the DAG's last steps by dashed edges.
    None for a document without steps."""
    lists = [("steps", _needs_of(document.get("steps")))]
    lists += [(words, _needs_of(document.get(key))) for key, words in HOOK_LISTS]
    lists = [(name, needs) for name, needs in lists if needs]
    if not lists:
        return None
    nodes: list[Node] = []
    edges: list[Edge] = []
    captions: list[Caption] = []
    where: dict[str, tuple[float, float]] = {}
    column = 0
    tallest = 0
    main_sinks: list[str] = []
    for name, needs in lists:
        layers = _ordered_layers(needs)
        first_column = column
        for layer in layers:
            x = PAD + column * (NODE_W + GAP_X)
            for index, sid in enumerate(layer):
                y = PAD + HEAD + index * (NODE_H + GAP_Y)
                where[sid] = (x, y)
                status = statuses.get(sid, "none")
                label = sid if len(sid) <= 17 else sid[:16] + "…"
                if sid in counts:
                    label = (sid if len(sid) <= 12 else sid[:11] + "…") + f" ×{counts[sid]}"
                nodes.append(Node(sid, label, status, x, y,
                                  f"{label}: {status.replace('_', ' ')}"
                                  + (f", {counts[sid]} items" if sid in counts else ""),
                                  f"log-{sid}" if status not in ("none", "pending") else None))
            tallest = max(tallest, len(layer))
            column += 1
        if name != "steps":
            captions.append(Caption(PAD + first_column * (NODE_W + GAP_X), name))
        for sid, wanted in needs.items():
            for need in wanted:
                if need in where and need in needs:
                    (x1, y1), (x2, y2) = where[need], where[sid]
                    edges.append(Edge(_curve(x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2)))
        if name == "steps":
            needed = {n for wanted in needs.values() for n in wanted}
            main_sinks = [sid for sid in needs if sid not in needed]
        else:
            roots = [sid for sid, wanted in needs.items() if not any(n in needs for n in wanted)]
            for sink in main_sinks:
                for root in roots:
                    (x1, y1), (x2, y2) = where[sink], where[root]
                    edges.append(Edge(_curve(x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2),
                                      dashed=True))
    width = PAD * 2 + column * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + HEAD + tallest * (NODE_H + GAP_Y) - GAP_Y
    return Graph(tuple(nodes), tuple(edges), tuple(captions), width, height)


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
        str(r.status), f"{r.id}: {_took(d)}, {r.status}", r.id)
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


def step_statuses(run: RunRecord, pending: Sequence[str]) -> tuple[dict[str, str],
                                                                  dict[str, int]]:
    """Each step's status for the graph (items folded into their step), and how many items
    each for_each step has."""
    statuses = {sid: "pending" for sid in pending}
    counts: dict[str, int] = {}
    for step in run.steps:
        base, dot, _ = step.id.partition(".")
        if dot:
            counts[base] = counts.get(base, 0) + 1
            statuses.setdefault(base, str(StepStatus.RUNNING))
        else:
            statuses[step.id] = str(step.status)
    return statuses, counts

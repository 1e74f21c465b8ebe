"""A run's timeline, as its page draws it: the wait in the queue, then each step's attempts
and the retry waits between them (read from the ``[pipeline]`` marker lines the engine writes
in a retried step's log), a for_each step's items under it, and the steps still pending.

Pure functions of the run's record, its log markers and the time now; positions are percents
of one time axis, so the page draws it without a script.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipeline.http.pages import HOOK_LISTS, took
from pipeline.model import EMPTY
from pipeline.runrecords import RunRecord, StepRecord, in_file_order

_ATTEMPT = re.compile(r"\[pipeline\] attempt (\d+) of \d+ at (\S+)")
_RETRYING = re.compile(r"; retrying in ([0-9.]+)s$")


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
                             f"waited {took((until - step.waited_from).total_seconds())} "
                             "for a pool slot" + ("" if step.started_at else " so far")))
    if step.started_at is None:
        return Row(label, status, tuple(bars), note=step.error or status, hook=hook)
    tries = attempts(step, markers.get(step.id))
    for index, attempt in enumerate(tries):
        last = index == len(tries) - 1
        if attempt.wait_before > 0:
            wait_start = attempt.start - timedelta(seconds=attempt.wait_before)
            bars.append(axis.bar(wait_start, attempt.start, "wait",
                                 f"waited {took(attempt.wait_before)} before attempt "
                                 f"{attempt.number}"))
        end = attempt.end or now
        kind = status if last else "failed"
        what = f"attempt {attempt.number}" if len(tries) > 1 or attempt.number > 1 else label
        bars.append(axis.bar(attempt.start, end, kind,
                             f"{what}: {took((end - attempt.start).total_seconds())}, "
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
            f"queued for {took((until - run.queued_at).total_seconds())}"),)))
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

"""What ``pipeline run`` shows while a run is under way.

On a terminal: a table of steps (state, attempt, duration) redrawn in place as they change.
Elsewhere (a pipe, a CI log): one plain line per event. Both read the engine's event records.
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from pipeline.events import (
    Event,
    RunFinished,
    RunStarted,
    StepFinished,
    StepRetrying,
    StepStarted,
)
from pipeline.model import Job, StepStatus

SYMBOLS = {
    StepStatus.PENDING: "·", StepStatus.RUNNING: "▶", StepStatus.SUCCEEDED: "✓",
    StepStatus.FAILED: "✗", StepStatus.TIMED_OUT: "⏱", StepStatus.CANCELLED: "⊘",
    StepStatus.SKIPPED: "-",
}
COLOURS = {
    StepStatus.RUNNING: "36", StepStatus.SUCCEEDED: "32", StepStatus.FAILED: "31",
    StepStatus.TIMED_OUT: "31", StepStatus.CANCELLED: "33", StepStatus.SKIPPED: "2",
}


@dataclass
class _Row:
    id: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    started: float | None = None
    ended: float | None = None
    error: str | None = None

    def duration(self, now: float) -> str:
        if self.started is None:
            return ""
        return f"{(self.ended or now) - self.started:.1f}s"


class LiveView:
    """Feed it every event with ``update``; call ``tick`` now and then to refresh durations."""

    def __init__(self, job: Job, run_id: str, *, out: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.job = job
        self.run_id = run_id
        self.rows: dict[str, _Row] = {s.id: _Row(s.id) for s in job.all_steps()}
        self._drawn = 0

    def update(self, event: Event) -> None:
        if getattr(event, "run_id", self.run_id) != self.run_id:
            return  # a child run's events (`uses: job`)
        now = time.monotonic()
        if isinstance(event, StepStarted):
            row = self._row(event.step_id)
            row.status, row.attempt, row.started = StepStatus.RUNNING, event.attempt, now
            self._say(f"{_clock(event.started_at)} {event.step_id}: started"
                      + (f" (attempt {event.attempt})" if event.attempt > 1 else ""))
        elif isinstance(event, StepRetrying):
            row = self._row(event.step_id)
            row.attempt = event.attempt + 1
            self._say(f"{event.step_id}: attempt {event.attempt} failed ({event.error}); "
                      f"retrying in {event.delay:g}s")
        elif isinstance(event, StepFinished):
            row = self._row(event.step_id)
            row.status, row.ended, row.error = event.status, now, event.error
            row.attempt = max(row.attempt, event.attempt)
            detail = f" ({event.error})" if event.error else ""
            took = f" in {row.duration(now)}" if row.started is not None else ""
            self._say(f"{_clock(event.finished_at)} {event.step_id}: {event.status}{took}"
                      f"{detail}")
        elif isinstance(event, RunStarted):
            self._say(f"{_clock(event.started_at)} run {self.run_id} of {self.job.name} "
                      "started")
        elif isinstance(event, RunFinished):
            self.tick()
            return
        else:
            return
        self.tick()

    def _row(self, step_id: str) -> _Row:
        if step_id not in self.rows:
            # A for_each instance ("build.2") goes right after its step's last row.
            base = step_id.rsplit(".", 1)[0]
            keys = list(self.rows)
            at = max((i for i, k in enumerate(keys) if k == base or k.startswith(base + ".")),
                     default=len(keys) - 1)
            items = list(self.rows.items())
            items.insert(at + 1, (step_id, _Row(step_id)))
            self.rows = dict(items)
        return self.rows[step_id]

    def _say(self, line: str) -> None:
        if not self.tty:
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # the reader went away (`pipeline run JOB | head -1`): the run goes on
            self.out = io.StringIO()

    def tick(self) -> None:
        """Redraw the table in place (terminal only)."""
        if not self.tty:
            return
        now = time.monotonic()
        width = max((len(r.id) for r in self.rows.values()), default=4)
        lines = [f"\x1b[1m{self.job.name}\x1b[0m  run {self.run_id}"]
        for row in self.rows.values():
            colour = COLOURS.get(row.status, "0")
            attempt = f"attempt {row.attempt}" if row.attempt > 1 else ""
            error = f"  {row.error}" if row.error and row.status is not StepStatus.SUCCEEDED \
                else ""
            lines.append(f" \x1b[{colour}m{SYMBOLS[row.status]} {row.id:<{width}}  "
                         f"{row.status:<9}\x1b[0m {row.duration(now):>7}  {attempt}{error}")
        text = "".join(f"\x1b[2K{line[:200]}\n" for line in lines)
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self._write(up + text)
        self._drawn = len(lines)


def _clock(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S")

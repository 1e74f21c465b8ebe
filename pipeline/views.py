"""Jobs and runs as the API and the commands show them.

A job: one row per job file, valid or not. The daemon builds the rows from its catalog and its
scheduler (``http``); ``pipeline list`` from the files on disk, the store and what a running
daemon wrote about itself (``cli``). Both hand ``job_row`` the same facts, so a job reads the
same wherever it is looked at (CONTRACT §5, "A job").

A run: the store's ``RunRecord`` as the API and ``--json`` show it (``run_as_dict``, CONTRACT
§5), and what its page and ``pipeline show`` say of a rerun.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from pipeline import schedule_words, triggers
from pipeline.errors import Problem
from pipeline.model import EMPTY, Job, RunStatus, StepStatus, Trigger, iso, thaw
from pipeline.runrecords import RunRecord, StepRecord, in_file_order

Pause = tuple[datetime, str | None, str | None]  # paused at, by whom, why


class CatalogFiles(NamedTuple):
    """The catalog's dictionaries at one moment (it replaces them whole, never edits them)."""

    jobs: Mapping[str, Job]
    problems: Mapping[str, tuple[Problem, ...]]
    files: Mapping[str, str]
    stale: Mapping[str, str]


def job_row(file: str, name: str | None, job: Job | None, problems: Sequence[Problem], *,
            now: datetime, stale: bool = False, next_fire: datetime | None = None,
            circuit_open: bool | None = False, last: RunRecord | None = None,
            active: int = 0, queued: int = 0, pause: Pause | None = None) -> dict[str, Any]:
    """One job file as the API shows it.

    ``job`` is the version that runs (for a ``stale`` file, the last good one), None if none
    is known; ``circuit_open`` None: not known (no version of the file was ever loaded).
    ``next_fire_note`` says what ``next_fire_time`` does not (``schedule_words.next_note``
    at ``now``): that the job fires on events, or fires no more and why.
    """
    note = schedule_words.next_note(job.schedules, next_fire, now, enabled=job.enabled) \
        if job is not None else None
    return {
        "name": name, "file": file, "valid": not problems,
        "errors": [p.as_dict() for p in problems],
        "stale": stale,
        "description": job.description if job else None,
        "enabled": job.enabled if job else None,
        "schedule": "; ".join(triggers.describe(s) for s in job.schedules)
        if job and job.schedules else None,
        "next_fire_time": iso(next_fire),
        "next_fire_note": note.words if note is not None else None,
        "last_run": run_as_dict(last, steps=False) if last else None,
        "active_runs": active,
        "queued_runs": queued,
        "circuit": None if circuit_open is None else "open" if circuit_open else "closed",
        "concurrency": str(job.concurrency.policy) if job else None,
        "params": {p.name: {"type": str(p.type), "default": p.default,
                            "required": p.required and not p.has_default,
                            "enum": list(p.enum) if p.enum is not None else None,
                            "description": p.description}
                   for p in job.params.values()} if job else {},
        "version": job.sha256 if job else None,
        "paused": pause is not None,
        "paused_at": iso(pause[0]) if pause else None,
        "paused_by": pause[1] if pause else None,
        "paused_reason": pause[2] if pause else None,
    }


def job_views(files: CatalogFiles, live: Mapping[str, tuple[datetime | None, bool]],
              last: Mapping[str, RunRecord], active: Sequence[RunRecord],
              paused: Mapping[str, Pause] | None = None, *,
              now: datetime) -> list[dict[str, Any]]:
    """Every job file as the API shows it, loaded jobs and invalid files, by file name.

    ``live`` is each scheduled job's next fire and whether its circuit is open.
    """
    counts = Counter(r.job for r in active)
    queued = Counter(r.job for r in active if r.status is RunStatus.QUEUED)
    views = []
    for file in sorted({*files.files, *files.problems}):
        name = files.files.get(file)
        if name is None:
            views.append(job_row(file, None, None, files.problems.get(file, ()), now=now))
            continue
        next_fire, circuit_open = live.get(name, (None, False))
        views.append(job_row(
            file, name, files.jobs.get(name), files.problems.get(file, ()), now=now,
            stale=files.stale.get(name) == file, next_fire=next_fire,
            circuit_open=circuit_open, last=last.get(name), active=counts.get(name, 0),
            queued=queued.get(name, 0), pause=(paused or {}).get(name)))
    return views


def step_as_dict(step: StepRecord) -> dict[str, Any]:
    """A step as the API and ``--json`` show it (CONTRACT §5)."""
    return {
        "id": step.id, "status": str(step.status), "attempt": step.attempt,
        "exit_code": step.exit_code, "signal": step.signal,
        "started_at": iso(step.started_at), "finished_at": iso(step.finished_at),
        "duration_s": step.duration_s, "outputs": dict(step.outputs), "error": step.error,
        "log": step.log, **({"item": step.item} if step.item is not None else {}),
        **({"waited_from": iso(step.waited_from)} if step.waited_from is not None else {}),
    }


def run_as_dict(run: RunRecord, *, steps: bool = True) -> dict[str, Any]:
    """A run as the API and ``--json`` show it (CONTRACT §5)."""
    answer: dict[str, Any] = {
        "id": run.id, "job": run.job, "status": str(run.status), "trigger": str(run.trigger),
        "fire_time": iso(run.fire_time), "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
        "duration_s": run.duration_s, "params": thaw(run.params),
        "version": run.version.as_dict() if run.version else None, "reason": run.reason,
        "parent_run_id": run.parent_run_id, "outputs": dict(run.outputs), "node": run.node,
        "attempt": run.attempt, "rerun_of": run.rerun_of,
    }
    if run.event is not None:
        answer["upstream" if run.trigger is Trigger.AFTER else "event"] = thaw(run.event)
    if run.notifications:
        answer["notifications"] = thaw(run.notifications)
    if run.late:
        answer["late"] = True
    if steps:
        answer["steps"] = [step_as_dict(s) for s in in_file_order(run)]
    return answer


# What `rerun --failed` (the API's {"failed": true}) runs again, with what depends on it.
RERUN_FAILED = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED})


def failed_steps(run: RunRecord) -> list[str]:
    """The run's steps (not its hooks, not a for_each step's items) that ended failed, timed
    out or cancelled: those a rerun of its failed steps starts from."""
    named = {entry.get("id") for entry in (run.document or EMPTY).get("steps") or ()
             if isinstance(entry, Mapping)}
    return [s.id for s in in_file_order(run) if "." not in s.id and s.status in RERUN_FAILED
            and (not named or s.id in named)]


def version_differs(original: RunRecord, rerun: RunRecord) -> bool:
    """Whether ``rerun`` ran another version of the job file than ``original`` (a rerun runs
    the current file)."""
    return (original.version is not None and rerun.version is not None
            and original.version.sha256 != rerun.version.sha256)

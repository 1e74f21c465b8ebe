"""A run as the store records it and gives it back: its steps, and which job file ran.

The engine and the scheduler tell what happens in events (``pipeline.events``); the store
turns them into these records, which the commands, the API and the pages read
(``views.run_as_dict`` shows one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.model import EMPTY, RunStatus, StepStatus, Trigger, empty_mapping


@dataclass(frozen=True)
class Version:
    """Which job file ran: its bytes' SHA-256 and, inside a git work tree, where it came from."""

    sha256: str
    git_commit: str | None = None
    git_blob: str | None = None
    git_dirty: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "git_commit": self.git_commit,
                "git_blob": self.git_blob, "git_dirty": self.git_dirty}


@dataclass(frozen=True)
class StepRecord:
    """A step of a recorded run, as the store gives it back."""

    run_id: str
    id: str
    status: StepStatus
    attempt: int = 0
    exit_code: int | None = None
    signal: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: Mapping[str, str] = field(default_factory=empty_mapping)
    error: str | None = None
    log: str | None = None  # path relative to the state directory
    pgid: int | None = None
    item: str | None = None  # a for_each instance: its item, as JSON (secrets masked)
    waited_from: datetime | None = None  # when it began to wait for its pool's slots

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class RunRecord:
    """A recorded run, as the store gives it back."""

    id: str
    job: str
    status: RunStatus
    trigger: Trigger
    fire_time: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: Mapping[str, Any] = field(default_factory=empty_mapping)
    version: Version | None = None
    reason: str | None = None
    parent_run_id: str | None = None
    node: str | None = None  # the node that holds (or last held) it
    attempt: int = 0  # how many times it was started (a run retried after its node was lost)
    rerun_of: str | None = None  # `pipeline rerun`: the run it runs again
    # what fired it: a file ({path, size, mtime}) or, for `after:`, the upstream run
    # ({id, job, status, outputs})
    event: Mapping[str, Any] | None = None
    notifications: tuple[Mapping[str, Any], ...] = ()  # each: target, event, status, at, error
    late: bool = False  # its deadline passed before it succeeded
    reuse: Mapping[str, Mapping[str, str]] = field(default_factory=empty_mapping)  # step ->
    # outputs it takes over from that run instead of running
    outputs: Mapping[str, str] = field(default_factory=empty_mapping)  # its job's `outputs:`
    document: Mapping[str, Any] | None = None
    steps: tuple[StepRecord, ...] = ()

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def in_file_order(run: RunRecord) -> list[StepRecord]:
    """The run's steps as its job file lists them (steps, on_success, on_failure, finally),
    each for_each step followed by its items in item order; steps the stored job does not
    name (or all, without one) after them, in the order they were recorded."""
    place: dict[str, int] = {}
    for key in ("steps", "on_success", "on_failure", "finally"):
        for entry in (run.document or EMPTY).get(key) or ():
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                place.setdefault(entry["id"], len(place))

    def position(indexed: tuple[int, StepRecord]) -> tuple[int, int, int]:
        seq, step = indexed
        base, _, item = step.id.partition(".")
        if base not in place:
            return (len(place), 0, seq)
        return (place[base], int(item) + 1 if item.isdigit() else 0, seq)

    return [step for _, step in sorted(enumerate(run.steps), key=position)]

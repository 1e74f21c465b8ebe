"""What the API and the pages show: jobs built from the catalog, the scheduler and the store;
step logs read from the state directory.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import triggers
from pipeline.errors import Problem
from pipeline.model import (
    Job,
    RunRecord,
    RunStatus,
    iso,
    run_as_dict,
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_log(path: Path, offset: int, size: int) -> bytes:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(size)
    except FileNotFoundError:
        return b""


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_tail(path: Path, size: int, *, keep_colors: bool = False) -> tuple[str, int, int]:
    """The last ``size`` bytes as text from a line start, how much was left out, the size.

    Terminal escape sequences are removed, unless ``keep_colors`` (for ``ansi.to_html``)."""
    total = log_size(path)
    start = max(total - size, 0)
    data = read_log(path, start, size)
    if start and b"\n" in data:
        cut = data.index(b"\n") + 1
        data, start = data[cut:], start + cut
    text = data.decode(errors="replace")
    return (text if keep_colors else _ANSI.sub("", text)), start, total


# -- jobs as the API shows them -----------------------------------------------------------------

class CatalogFiles(NamedTuple):
    """The catalog's dictionaries at one moment (it replaces them whole, never edits them)."""

    jobs: Mapping[str, Job]
    problems: Mapping[str, tuple[Problem, ...]]
    files: Mapping[str, str]
    stale: Mapping[str, str]


def job_views(files: CatalogFiles, live: Mapping[str, tuple[datetime | None, bool]],
              last: Mapping[str, RunRecord], active: Sequence[RunRecord],
              paused: Mapping[str, tuple[datetime, str | None, str | None]] | None = None,
              ) -> list[dict[str, Any]]:
    """Every job file as the API shows it, loaded jobs and invalid files, by file name.

    ``live`` is each scheduled job's next fire and whether its circuit is open.
    """
    counts = Counter(r.job for r in active)
    queued = Counter(r.job for r in active if r.status is RunStatus.QUEUED)
    views = []
    for file in sorted({*files.files, *files.problems}):
        name = files.files.get(file)
        job = files.jobs.get(name) if name else None
        problems = files.problems.get(file, ())
        run = last.get(name) if name else None
        next_fire, circuit_open = live.get(name, (None, False)) if name else (None, False)
        pause = (paused or {}).get(name) if name else None
        views.append({
            "name": name, "file": file, "valid": not problems,
            "errors": [p.as_dict() for p in problems],
            "stale": name is not None and files.stale.get(name) == file,
            "description": job.description if job else None,
            "enabled": job.enabled if job else None,
            "schedule": "; ".join(triggers.describe(s) for s in job.schedules)
            if job and job.schedules else None,
            "next_fire_time": iso(next_fire),
            "last_run": run_as_dict(run, steps=False) if run else None,
            "active_runs": counts.get(name, 0) if name else 0,
            "queued_runs": queued.get(name, 0) if name else 0,
            "circuit": "open" if circuit_open else "closed",
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
        })
    return views


def declared_steps(record: RunRecord) -> list[str]:
    """The step ids the run's job declares (its main DAG), from the stored document."""
    document = record.document or {}
    steps = document.get("steps") if isinstance(document, Mapping) else None
    if not isinstance(steps, Sequence):
        return []
    return [str(s["id"]) for s in steps if isinstance(s, Mapping) and "id" in s]


def declares(record: RunRecord, step_id: str) -> bool:
    document = record.document or {}
    ids = set(declared_steps(record))
    for key in ("on_success", "on_failure", "finally"):
        extra = document.get(key) if isinstance(document, Mapping) else None
        if isinstance(extra, Sequence):
            ids.update(str(s["id"]) for s in extra if isinstance(s, Mapping) and "id" in s)
    return step_id.split(".", 1)[0] in ids



"""Jobs as the commands find them: one by name or by file, or the whole jobs directory."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import spec
from pipeline.cli import Settings, fail
from pipeline.errors import JobInvalid
from pipeline.model import Job
from pipeline.spec import Loaded


def find_job(settings: Settings, ref: str, *, missing_code: int = 2) -> Job:
    """A job by file path or by name in the jobs directory; JobInvalid if its file is bad."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or os.sep in ref:
        if not path.is_file():
            fail(f"no job file {ref}", missing_code)
        return settings.needing_plugins(
            lambda: spec.load_job(path, runner_schemas=settings.runner_schemas()))
    if not settings.jobs_dir.is_dir():
        fail(f"no jobs directory {settings.jobs_dir} (and {ref!r} is not a file)", missing_code)
    loaded = settings.needing_plugins(
        lambda: spec.load_jobs([settings.jobs_dir], runner_schemas=settings.runner_schemas()))
    if ref in loaded.jobs:
        return loaded.jobs[ref]
    for file, name in loaded.files.items():
        if name == ref and file in loaded.problems:
            raise JobInvalid(loaded.problems[file])
    known = ", ".join(sorted(loaded.jobs)) or "none"
    fail(f"unknown job {ref!r} in {settings.jobs_dir} (jobs: {known})", missing_code)


def jobs_on_disk(settings: Settings) -> Loaded | None:
    """Every job file in the jobs directory, loaded; None if there is no jobs directory."""
    if not settings.jobs_dir.is_dir():
        return None
    return settings.needing_plugins(lambda: spec.load_jobs(
        [settings.jobs_dir], runner_schemas=settings.runner_schemas()))

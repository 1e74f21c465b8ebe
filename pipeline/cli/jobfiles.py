"""Jobs as the commands find them: one by name or by file, or the whole jobs directory.

Where there is a state, a job name wanted by two files goes to the one a daemon keeps it for:
the file that held it first, as the state remembers (``jobset.load_jobs`` with ``remembered``,
the rule ``watch.Catalog`` follows); a file that is broken now but whose last good version
the state keeps still holds its name, and that version is what ``list`` and ``why`` show.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import click

from pipeline import jobset, spec
from pipeline.cli import Settings, fail
from pipeline.errors import JobInvalid, StateError
from pipeline.jobset import Loaded
from pipeline.model import Definition, Job


def remembered(settings: Settings) -> Mapping[str, Definition] | None:
    """The last good version of each job file that a daemon remembers in the state, by the
    file's path under the jobs directory; None without a state (then path order decides who
    holds a name). A state that cannot be read is said on stderr, and counts as none."""
    # Without a state directory (a fresh clone's pre-commit `validate`), nothing of the store
    # is imported.
    if settings.store_url is None and not settings.state_dir.is_dir():
        return None
    from pipeline.cli.state import has_state
    from pipeline.store import open_store

    if not has_state(settings):
        return None
    try:
        # Read only: the commands that merely look must not repair the state on the way.
        store = open_store(settings.state_dir, settings.store_url)
        try:
            definitions = store.definitions()
        finally:
            store.close()
    except StateError as exc:
        click.echo(f"pipeline: cannot read which files hold which job names ({exc}); "
                   "judging by path order", err=True)
        return None
    return jobset.remembered_files(settings.jobs_dir, definitions)


def load_directory(settings: Settings) -> Loaded:
    """Every job file in the jobs directory, loaded, names judged as a daemon judges them."""
    known = remembered(settings)
    return settings.needing_plugins(lambda: jobset.load_jobs(
        [settings.jobs_dir], runner_schemas=settings.runner_schemas(), remembered=known))


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
    loaded = load_directory(settings)
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
    return load_directory(settings)

"""What the shell completes (``pipeline completion bash|zsh|fish``): job names from the jobs
directory, run ids and step ids from the store.

Completion runs on every Tab press, so it must be quick and must never write: job names come
from a glance at each file's ``name:`` line (not a full load and validation), runs from the
newest hundreds in the store, opened without repairing anything; a missing jobs directory or
state gives no candidates rather than an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from click.shell_completion import CompletionItem

from pipeline.model import JOB_NAME, RUN_ID, STEP_INSTANCE_ID

if TYPE_CHECKING:
    from pipeline.store import Store

RUNS_OFFERED = 200
_NAME_LINE = re.compile(rb"^name:\s*['\"]?([A-Za-z0-9][A-Za-z0-9_.-]{0,63})['\"]?\s*(?:#.*)?$",
                        re.MULTILINE)


def _looks_like_a_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or text.endswith((".yaml", ".yml"))


def job_names(jobs_dir: Path) -> list[str]:
    """The job names the files of ``jobs_dir`` claim: a top-level ``name:`` line, else the
    file's name (what ``spec`` gives a job without one)."""
    from pipeline import spec

    if not jobs_dir.is_dir():
        return []
    names = set()
    for path in spec.find_job_files(jobs_dir):
        try:
            with path.open("rb") as file:
                head = file.read(64 * 1024)
        except OSError:
            continue
        found = _NAME_LINE.search(head)
        name = found.group(1).decode() if found else path.stem
        if JOB_NAME.fullmatch(name):
            names.add(name)
    return sorted(names)


def complete_jobs(jobs_dir: Path, incomplete: str) -> list[CompletionItem]:
    """Job names starting with ``incomplete``; a path is left to the shell's file completion."""
    if _looks_like_a_path(incomplete):
        return [CompletionItem(incomplete, type="file")]
    return [CompletionItem(name) for name in job_names(jobs_dir)
            if name.startswith(incomplete)]


def complete_runs(state_dir: Path, store_url: str | None, incomplete: str,
                  ) -> list[CompletionItem]:
    """The newest runs whose id starts with ``incomplete``, each with its job and status."""
    store = _store(state_dir, store_url)
    if store is None:
        return []
    try:
        runs = store.runs(limit=RUNS_OFFERED)
    finally:
        store.close()
    return [CompletionItem(run.id, help=f"{run.job} {run.status}") for run in runs
            if run.id.startswith(incomplete)]


def complete_steps(state_dir: Path, store_url: str | None, run_id: str | None,
                   incomplete: str) -> list[CompletionItem]:
    """The steps of ``run_id`` (for_each items too) starting with ``incomplete``."""
    if not run_id or not RUN_ID.fullmatch(run_id):
        return []
    store = _store(state_dir, store_url)
    if store is None:
        return []
    try:
        record = store.run(run_id)
    finally:
        store.close()
    if record is None:
        return []
    return [CompletionItem(step.id, help=str(step.status)) for step in record.steps
            if step.id.startswith(incomplete) and STEP_INSTANCE_ID.fullmatch(step.id)]


def _store(state_dir: Path, store_url: str | None) -> Store | None:
    """The store, if there is one to read (never made here); None on any trouble."""
    from pipeline.errors import PipelineError
    from pipeline.store import open_store
    from pipeline.store.sqlite import DB_FILE

    if store_url is None and not (state_dir / DB_FILE).is_file():
        return None
    try:
        return open_store(state_dir, store_url)
    except (PipelineError, OSError):
        return None

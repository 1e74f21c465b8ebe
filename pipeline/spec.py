"""One job file in, a frozen ``Job`` out: safe YAML, JSON Schema, then semantic checks.

A file goes through four stages. Each reports located ``Problem``s (``FILE:LINE:COL``) and
never lets another exception out, whatever the bytes:

1. bytes: at most ``MAX_BYTES`` of a regular file (``read_job_file``);
2. YAML: plain data and the position of every value, built safely (``pipeline.yamlsafe``);
3. JSON Schema: fast "valid?", and for an invalid document every error in words
   (``pipeline.schema``);
4. semantic checks the schema cannot express: needs and cycles, cron, zones, durations,
   expressions and what they look up, parameter defaults (``pipeline.checks``), with
   warnings for what loads but is likely a mistake (an ``at:`` in the past).

Only a document that passed all of them becomes a ``Job``, frozen (``pipeline.build``).

Given the jobs directory's settings (``kind: settings``, ``pipeline.settings``), a job is
judged against them (its ``pool:`` and ``email`` targets) and gets their ``defaults``, merged
into its document before it is built (``settings.apply_defaults``); without them, it is not
judged on those. The settings file itself is not a job.

What only a set of files can tell (which file holds a job name, whether a ``uses: job`` step
or an ``after:`` names a job that is there, which file is the settings file) is judged by
``pipeline.jobset``, which loads each file with ``load_file``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pipeline import checks, yamlsafe
from pipeline.build import build_job
from pipeline.errors import JobInvalid, Problem, Severity
from pipeline.model import Job, Settings
from pipeline.schema import Validators, validators
from pipeline.settings import apply_defaults, is_settings_file
from pipeline.yamlsafe import JsonPath, Mark

MAX_BYTES = 1 << 20  # a job file is a page or two; anything near this is a mistake or an attack

# -- finding job files -------------------------------------------------------------------


def _ignored(name: str) -> bool:
    return name.startswith((".", "#")) or name.endswith(("~", ".swp", ".tmp", "#"))


def find_job_files(root: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``root``, sorted; ``root`` itself if it is a file.

    Hidden files and directories and editor leftovers (``.*``, ``*~``, ``*.swp``, ``*.tmp``,
    ``#*#``) are skipped; so is anything that is not a regular file (a FIFO would block).
    Symlinked folders are followed, each real folder once (a link loop ends there).
    """
    if not root.is_dir():
        return [root] if root.exists() else []
    found: list[str] = []
    visited: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if _ignored(name) or not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                found.append(path)
    return sorted(map(Path, found))


def find_settings_file(root: Path) -> Path | None:
    """The settings file among ``find_job_files(root)`` (the first, if there are several)."""
    return next((path for path in find_job_files(root) if is_settings_file(path)), None)


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedFile:
    """One job file, loaded on its own: its job, or the problems that keep it from being one."""

    job: Job | None
    problems: tuple[Problem, ...]
    name: str | None = None  # the job's name, when it could be read
    name_mark: Mark = (1, 1)  # where it is written; 1:1 when it comes from the file name
    warnings: tuple[Problem, ...] = ()
    # An invalid file that the schema passed: the shape of its steps is sound, so what they
    # say of other jobs can be judged all the same (pipeline.jobset), located in this.
    document: yamlsafe.Document | None = None


def read_job_file(path: Path) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file; OSError or ValueError with a message."""
    return yamlsafe.read_file(path, MAX_BYTES)


def load_file(path: Path, schema: Validators, display: str, now: datetime,
              data: bytes | None = None, settings: Settings | None = None) -> LoadedFile:
    """Job file ``path`` (``data``: its bytes, when already read), loaded on its own and named
    ``display`` in messages, judged with ``schema``, ``now`` and ``settings`` (see
    ``load_job``). Never raises for a bad file: its problems are in the answer."""
    warned: list[tuple[Mark, str]] = []

    def fail(problems: list[tuple[Mark, str]], name: str | None = None,
             name_mark: Mark = (1, 1), document: yamlsafe.Document | None = None,
             ) -> LoadedFile:
        found = sorted({Problem(display, line, col, message)
                        for (line, col), message in problems})
        return LoadedFile(None, tuple(found), name, name_mark, _warnings(display, warned),
                          document)

    try:
        data = read_job_file(path) if data is None else data
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return fail([((1, 1), f"cannot read the file: {reason}")])
    if len(data) > MAX_BYTES:
        size = path.stat().st_size if path.exists() else len(data)
        return fail([((1, 1), f"the file is {size / (1 << 20):.1f} MiB; a job file may be at "
                      f"most {MAX_BYTES >> 20} MiB")])
    try:
        document = yamlsafe.parse(data)
    except yamlsafe.Refused as exc:
        return fail([(exc.mark, exc.message)])
    mapping = document.data
    if mapping.get("kind") == "settings":
        return fail([(document.where(("kind",)), "this is the jobs directory's settings file "
                      "(kind: settings), not a job")])
    stem = os.path.basename(display).rsplit(".", 1)[0]
    name_value = mapping.get("name", stem)
    name = name_value if isinstance(name_value, str) else None
    name_mark = document.where(("name",)) if "name" in mapping else (1, 1)
    problems = list(document.problems)
    reported: set[JsonPath] = set()
    shaped = not problems and schema.is_valid(mapping)
    if not shaped:
        # A value YAML already complained about (a bad tag) was built as null: the schema's
        # complaint about that null, at the same node, would only confuse.
        bad_marks = {mark for mark, _ in problems}
        for where, at_key, message in schema.explain(mapping):
            mark = document.where(where, key=at_key)
            if mark not in bad_marks:
                problems.append((mark, message))
            reported.add(where)
    # The text places a message on a lookup inside a string (yamlsafe checked it decodes).
    text = data.decode("utf-8").removeprefix("\ufeff")
    found = checks.check(document, reported, stem, text=text, now=now, settings=settings,
                         folder=os.path.dirname(os.path.abspath(path)))
    problems.extend(found.errors)
    warned.extend(found.warnings)
    if problems:
        return fail(problems, name, name_mark, document if shaped else None)
    if settings is not None:
        mapping = apply_defaults(mapping, settings.defaults)
    job = build_job(mapping, document, name=cast(str, name), file=display,
                 sha256=hashlib.sha256(data).hexdigest())
    return LoadedFile(job, (), job.name, name_mark, _warnings(display, warned))


def _warnings(display: str, warned: list[tuple[Mark, str]]) -> tuple[Problem, ...]:
    return tuple(sorted({Problem(display, line, col, message, Severity.WARNING)
                         for (line, col), message in warned}))


def load_job(path: Path, *, runner_schemas: Mapping[str, Mapping[str, Any]] | None = None,
             display_path: str | None = None, data: bytes | None = None,
             settings: Settings | None = None) -> Job:
    """Read, validate and build one job file.

    ``runner_schemas`` maps each runner name to the JSON Schema of its ``with`` (None: the
    built-in runners). ``display_path`` is the file name used in messages and ``Job.file``
    (default ``str(path)``). ``data``, when given, stands for the file's bytes (a version
    of it remembered by the state). ``settings``: the jobs directory's settings, whose
    defaults the job gets and against which its pools and email targets are judged (None:
    no defaults, not judged). Raises ``JobInvalid`` with every problem found (errors:
    warnings are not raised, see ``jobset.load_jobs``), also for the settings file itself; a
    ``uses: job`` step is not checked against other files.
    """
    result = load_file(path, validators(runner_schemas),
                       str(path) if display_path is None else display_path, datetime.now(UTC),
                       data, settings)
    if result.job is None:
        raise JobInvalid(result.problems)
    return result.job

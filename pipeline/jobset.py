"""A set of job files judged together: what no file can tell on its own.

``load_jobs`` loads each file with ``spec.load_file``, then judges the set as a whole:

- which file holds each job name: a name wanted by several files is held by one of them, by
  the same rule as the daemon's catalog (``watch.Catalog``), which judges with the functions
  here too (``held_names``, ``name_holder``, ``name_taken``, ``last_good``);
- a ``uses: job`` step must name a job that is there, with parameters it declares
  (``call_problems``), and an ``after:`` schedule a job that is there, with no ring of jobs
  firing after each other (``after_problems``). Given single files rather than a directory, a
  name outside them is not judged: the jobs directory it will run in is not known;
- the one settings file of a jobs directory (``kind: settings``, ``pipeline.settings``) is
  not a job: it is validated as settings, and every job is loaded with it (its defaults, its
  pools and SMTP server). A directory without a settings file has no pools and no SMTP
  server; single files without it are not judged on those.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import jobgraph, params, spec, yamlsafe
from pipeline.errors import JobInvalid, Problem, did_you_mean
from pipeline.model import Definition, Job, Settings
from pipeline.schema import Validators, dotted, validators
from pipeline.settings import is_settings_file, settings_or_problems
from pipeline.yamlsafe import JsonPath, Mark

# -- who holds a job name -----------------------------------------------------------------
# The daemon remembers in the state the last good version of each file that holds a job name
# (``watch.Catalog``). The daemon and the commands judge with these functions, so that they
# agree on which file holds a name and what a broken file still runs.

SETTINGS_NAME = ""  # the settings file's name among remembered definitions (CONTRACT §1)


def remembered_files(root: Path, definitions: Mapping[str, Definition]) -> dict[str, Definition]:
    """The state's ``definitions`` (by file relative to the jobs directory ``root``) by the
    file's path as ``spec.find_job_files(root)`` gives it."""
    return {str(root / file): known for file, known in definitions.items()}


def held_names(remembered: Mapping[str, Definition]) -> dict[str, str]:
    """Which file held each job name, by the last good versions the state remembers."""
    held: dict[str, str] = {}
    for file, known in remembered.items():
        if known.name != SETTINGS_NAME:
            held.setdefault(known.name, file)
    return held


def name_holder(claimants: Sequence[str], held_by: str | None) -> str:
    """Which of ``claimants`` (the files that want one job name, in path order) gets it: the
    file that held it before (``held_by``), else the first."""
    return held_by if held_by is not None and held_by in claimants else claimants[0]


def name_taken(name: str, holder: str, *, held: bool) -> str:
    """The message for a file that wants job name ``name``, which ``holder`` has (``held``:
    because it had it first; else because it comes first in path order)."""
    return (f"the job name {name!r} is already used by {holder}, "
            + ("which held it first" if held else "the first file in path order"))


def name_mark(data: bytes) -> Mark:
    """Where a job file's bytes write its name (1:1 when the file name gives it)."""
    try:
        document = yamlsafe.parse(data)
    except yamlsafe.Refused:
        return (1, 1)
    return document.where(("name",)) if "name" in document.data else (1, 1)


def last_good(path: str, known: Definition, *,
              runner_schemas: Mapping[str, Mapping[str, Any]] | None = None,
              settings: Settings | None = None) -> Job:
    """The last good version of job file ``path`` that the state remembers, built again (it
    is named ``path`` in messages and ``Job.file``); raises ``JobInvalid`` if it no longer
    loads (a runner gone, a settings file that changed)."""
    return spec.load_job(Path(path), runner_schemas=runner_schemas, display_path=path,
                         data=known.source, settings=settings)


# -- the set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """What a set of job files holds: valid jobs by name, problems by file."""

    jobs: Mapping[str, Job]
    problems: Mapping[str, tuple[Problem, ...]]  # only the invalid files; errors only
    # file -> job name, wherever the name could be read (for a file whose last good version
    # holds its name, that version's name)
    files: Mapping[str, str]
    # file -> its warnings, valid or not: a file with warnings only is valid
    warnings: Mapping[str, tuple[Problem, ...]] = field(default_factory=dict)
    # the settings the jobs were judged and built with: the settings file's (None while it
    # is invalid), else the one given to load_jobs, else for a directory an empty Settings()
    # (no pools, no SMTP: its file is ""), else None (not judged)
    settings: Settings | None = None
    settings_files: tuple[str, ...] = ()  # the files that say kind: settings, valid or not
    # job name -> the last good version (remembered by the state) of the invalid file that
    # holds the name: what a daemon runs of it (only with ``remembered``)
    kept: Mapping[str, Job] = field(default_factory=dict)

    def scheduled(self, name: str) -> Job | None:
        """The version of job ``name`` that a daemon schedules: its file's, else the last good
        version the state keeps of its broken file (None: no file holds the name)."""
        return self.jobs.get(name) or self.kept.get(name)


def load_jobs(paths: Sequence[Path], *,
              runner_schemas: Mapping[str, Mapping[str, Any]] | None = None,
              now: datetime | None = None, settings: Settings | None = None,
              remembered: Mapping[str, Definition] | None = None) -> Loaded:
    """Load every job file in ``paths`` (directories are searched with ``spec.find_job_files``).

    A job name wanted by several files is held by one of them; the others are invalid. With
    ``remembered`` (the last good versions the state keeps, by file path: see
    ``remembered_files``) the daemon's rule decides: the file that held the name keeps it,
    and an invalid file whose last good version still loads keeps holding that version's name
    (the version is in ``Loaded.kept``). Otherwise, and for a name no file held, the first
    file in path order holds it. A file is invalid too when a ``uses: job`` step names a job
    not there or a parameter it does not declare (``call_problems``), or an ``after:`` names a
    job not there or closes a ring (``after_problems``); when ``paths`` holds no directory, a
    job outside the files given is not judged. ``now`` is what an ``at:`` in the past is
    measured from (default: the current time). Never raises for a bad file: its problems are
    in ``Loaded.problems``.

    A settings file among them (``kind: settings``) is validated as settings, not as a job,
    and the jobs get its defaults and are judged against its pools and SMTP server; a second
    one is invalid. Without one, ``settings`` (when given) stands for it; without either, a
    directory has no pools and no SMTP server, and single files are not judged on those.
    """
    schema = validators(runner_schemas)
    # Loading allocates many short-lived objects while the loaded jobs pile up; the cyclic
    # collector's full passes over them cost a fifth of the time (measured), and what we
    # build has no cycles worth collecting mid-load.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_all(paths, schema, now or datetime.now(UTC), settings, remembered or {},
                         runner_schemas)
    finally:
        if collecting:
            gc.enable()


@dataclass(frozen=True)
class _File:
    """One job file of the set, loaded on its own."""

    display: str
    loaded: spec.LoadedFile
    good: Job | None = None  # an invalid file's last good version, when it still loads

    @property
    def name(self) -> str | None:
        """The job name the file wants: its last good version's, when that is kept."""
        return self.good.name if self.good is not None else self.loaded.name


def _load_all(paths: Sequence[Path], schema: Validators, now: datetime,
              given: Settings | None, remembered: Mapping[str, Definition],
              runner_schemas: Mapping[str, Mapping[str, Any]] | None) -> Loaded:
    """``load_jobs``, stage by stage: the files, the settings file among them, each job file
    on its own, then which file holds each name, and what the jobs say of each other."""
    complete = any(path.is_dir() for path in paths)
    targets = [found for path in paths
               for found in (spec.find_job_files(path) if path.is_dir() else [path])]
    problems: dict[str, tuple[Problem, ...]] = {}  # each stage adds what it finds
    settings = given if given is not None else Settings() if complete else None
    job_files, settings, settings_files = _settings_among(targets, settings, problems)
    # Remembered files by absolute path: the paths given may be spelled another way.
    known_by_path = {os.path.abspath(file): known for file, known in remembered.items()}
    read: list[_File] = []
    for path, data in job_files:
        display = str(path)
        loaded = spec.load_file(path, schema, display, now, data, settings)
        good = None if loaded.job is not None else _still_good(
            display, known_by_path.get(os.path.abspath(path)), runner_schemas=runner_schemas,
            settings=settings)
        read.append(_File(display, loaded, good))
    files = {file.display: file.name for file in read if file.name is not None}
    jobs, kept = _hold_names(read, files, held_names(known_by_path), problems)
    _judge_across(read, files, jobs, problems, complete=complete)
    warnings = {file.display: file.loaded.warnings for file in read if file.loaded.warnings}
    return Loaded(jobs, problems, files, warnings, settings, tuple(settings_files), kept)


def _still_good(display: str, known: Definition | None, *,
                runner_schemas: Mapping[str, Mapping[str, Any]] | None,
                settings: Settings | None) -> Job | None:
    """The last good version the state remembers (``known``) of invalid job file ``display``,
    if it still loads."""
    if known is None or known.name == SETTINGS_NAME:
        return None
    try:
        return last_good(display, known, runner_schemas=runner_schemas, settings=settings)
    except JobInvalid:
        return None  # nothing of it runs: it is an invalid file like any other


def _hold_names(read: Sequence[_File], files: Mapping[str, str], held: Mapping[str, str],
                problems: dict[str, tuple[Problem, ...]]) -> tuple[dict[str, Job], dict[str, Job]]:
    """Which file holds each job name (``files``: file -> the name it wants; ``held``: name ->
    the file that held it, by the state). Returns the valid jobs that hold their names, and
    the last good versions that hold the names of invalid files (``Loaded.kept``); the
    problems of the other files, with the name each wants that another holds, go into
    ``problems``."""
    claimants: dict[str, list[str]] = {}  # job name -> the files that want it, in path order
    for display, wanted in files.items():
        claimants.setdefault(wanted, []).append(display)
    holders = {name: name_holder(keys, next(
        (key for key in keys if os.path.abspath(key) == held.get(name)), None))
        for name, keys in claimants.items()}
    jobs: dict[str, Job] = {}
    kept: dict[str, Job] = {}
    for file in read:
        found = file.loaded.problems
        name = files.get(file.display)
        if name is not None and holders[name] != file.display:
            holder = holders[name]
            line, column = file.loaded.name_mark
            found = tuple(sorted({*found, Problem(file.display, line, column, name_taken(
                name, holder, held=held.get(name) == os.path.abspath(holder)))}))
        if found:
            problems[file.display] = found
            if name is not None and file.good is not None and holders[name] == file.display:
                kept[name] = file.good
        elif file.loaded.job is not None:
            jobs[file.loaded.job.name] = file.loaded.job
    return jobs, kept


def _judge_across(read: Sequence[_File], files: Mapping[str, str], jobs: dict[str, Job],
                  problems: dict[str, tuple[Problem, ...]], *, complete: bool) -> None:
    """The calls and ``after:`` schedules of the jobs, judged across the files (``files``: the
    name each file wants): a job found wanting leaves ``jobs``, and what is found goes into
    ``problems``."""
    known: dict[str, Job | None] = {**dict.fromkeys(files.values()), **jobs}
    for name, job in list(jobs.items()):
        calls = call_problems(job, known, complete=complete)
        if calls:
            del jobs[name]
            problems[job.file] = calls
    # A file invalid for other reasons gets its calls' errors too: all of them at once.
    for file in read:
        document = file.loaded.document
        if document is None:
            continue
        flaws = _call_flaws(file.loaded.name, _document_calls(document), known,
                            complete=complete)
        if flaws:
            problems[file.display] = tuple(sorted({
                *problems[file.display], *_locate(file.display, document, flaws)}))
    # Jobs fire after each other only across files: judged once the files are all read.
    for name, found in after_problems({**dict.fromkeys(files.values()), **jobs},
                                      complete=complete).items():
        path = jobs.pop(name).file
        problems[path] = tuple(sorted({*problems.get(path, ()), *found}))


def _settings_among(targets: Sequence[Path], settings: Settings | None,
                    problems: dict[str, tuple[Problem, ...]],
                    ) -> tuple[list[tuple[Path, bytes | None]], Settings | None, list[str]]:
    """The job files among ``targets`` (with their bytes, None if unreadable), the settings
    to judge them with (the settings file's, else ``settings``) and the settings files found;
    a settings file's problems, and a second one, go into ``problems``."""
    job_files: list[tuple[Path, bytes | None]] = []
    settings_files: list[str] = []
    for path in dict.fromkeys(targets):
        try:
            data: bytes | None = spec.read_job_file(path)
        except (OSError, ValueError):
            data = None  # spec.load_file says why
        if data is None or not is_settings_file(path, data):
            job_files.append((path, data))
            continue
        display = str(path)
        settings_files.append(display)
        if len(settings_files) == 1:
            # An invalid settings file leaves settings None: pools and SMTP are not judged.
            settings, bad = settings_or_problems(path, display_path=display, data=data)
            if bad:
                problems[display] = bad
        else:
            problems[display] = (Problem(display, *_kind_mark(data), (
                f"a second settings file: {settings_files[0]} is the settings file of this "
                "jobs directory (there is at most one)")),)
    return job_files, settings, settings_files


def _kind_mark(data: bytes) -> Mark:
    """Where a settings file writes ``kind:`` (1:1 if it cannot be read as YAML)."""
    try:
        return yamlsafe.parse(data).where(("kind",), key=True)
    except yamlsafe.Refused:
        return (1, 1)


# -- what jobs say of each other ----------------------------------------------------------

# A `uses: job` step: where its `with` is, the line the step starts on, and its `with`.
_Call = tuple[JsonPath, int, Mapping[str, Any]]
_LISTS = ("steps", "on_success", "on_failure", "finally")  # where a job file lists steps


def call_problems(job: Job, jobs: Mapping[str, Job | None], *,
                  complete: bool = True) -> tuple[Problem, ...]:
    """What is wrong with ``job``'s ``uses: job`` steps, given the jobs there are.

    ``jobs`` maps each job name there is to its job (None: its file is invalid, so what it
    declares is not known). A call must name one of them, not ``job`` itself, with parameters
    the callee declares, of their types, and every one it requires. With ``complete`` false
    (``jobs`` is not a whole jobs directory) a name not in ``jobs`` is not judged; nor is one
    given by an expression, until it runs. The problems are located in ``job.file``, read
    again only when there are some.
    """
    calls = [((list_name, index, "with"), step.line, step.with_)
             for list_name, steps in zip(_LISTS, (job.steps, job.on_success, job.on_failure,
                                                  job.finally_), strict=True)
             for index, step in enumerate(steps) if step.uses == "job"]
    return _located(job, _call_flaws(job.name, calls, jobs, complete=complete))


def _document_calls(document: yamlsafe.Document) -> tuple[_Call, ...]:
    """The ``uses: job`` steps of a document the schema passed (lists of steps, each with
    its ``with`` a mapping: checked again all the same, whatever the schema says)."""
    return tuple(((list_name, index, "with"), document.where((list_name, index))[0],
                  step.get("with", {}))
                 for list_name in _LISTS
                 for index, step in enumerate(_list(document.data.get(list_name)))
                 if isinstance(step, Mapping) and step.get("uses") == "job"
                 and isinstance(step.get("with", {}), Mapping))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _call_flaws(caller: str | None, calls: Sequence[_Call], jobs: Mapping[str, Job | None], *,
                complete: bool) -> list[tuple[int, JsonPath, bool, str]]:
    """What is wrong with the calls of job ``caller`` (see ``call_problems``), unlocated."""
    found: list[tuple[int, JsonPath, bool, str]] = []
    for where, line, with_ in calls:
        name = with_.get("job")
        if not isinstance(name, str) or "${{" in name:
            continue
        if name == caller:
            found.append((line, (*where, "job"), False, f"job {name!r} cannot start itself"))
            continue
        if name not in jobs:
            if complete:
                hint = did_you_mean(name, jobs) or (
                    f" (jobs: {', '.join(sorted(jobs)[:12])})" if jobs else "")
                found.append((line, (*where, "job"), False,
                              f"there is no job {name!r} in the jobs directory{hint}"))
            continue
        callee = jobs[name]
        given = with_.get("params", {})
        if callee is None or not isinstance(given, Mapping):
            continue
        declared = ", ".join(sorted(callee.params)) or "none"
        for key, value in given.items():
            param = callee.params.get(key)
            if param is None:
                found.append((line, (*where, "params", key), True,
                              f"job {name!r} has no parameter {key!r}"
                              f"{did_you_mean(key, callee.params)} (its parameters: "
                              f"{declared})"))
            elif (message := params.value_problem(param, value)) is not None:
                found.append((line, (*where, "params", key), False,
                              f"parameter {key!r} of job {name!r}: {message}"))
        missing = [p for p, d in callee.params.items()
                   if d.required and not d.has_default and p not in given]
        if missing:
            found.append((line, (*where, "params") if "params" in with_ else (*where, "job"),
                          False, f"job {name!r} requires {', '.join(map(repr, missing))}"))
    return found


def after_problems(jobs: Mapping[str, Job | None], *,
                   complete: bool = True) -> dict[str, tuple[Problem, ...]]:
    """What is wrong with the jobs' ``after:`` schedules, by job name (only those with some).

    ``jobs`` maps each job name there is to its job (None: its file is invalid). An ``after:``
    must name one of them (judged only when ``complete``), not its own job, and jobs must not
    fire after each other in a ring (``pipeline.jobgraph``). Located in each job's file, read
    again only when there are problems.
    """
    valid = {name: job for name, job in jobs.items() if job is not None}
    found: dict[str, list[tuple[int, JsonPath, bool, str]]] = {}
    for flaw in jobgraph.after_flaws(valid, jobs.keys(), complete=complete):
        found.setdefault(flaw.job, []).append((1, flaw.path, False, flaw.message))
    return {name: _located(valid[name], flaws) for name, flaws in found.items()}


def _located(job: Job, found: list[tuple[int, JsonPath, bool, str]]) -> tuple[Problem, ...]:
    """Problems (line to fall back on, path, whether at the key, message) in ``job.file``."""
    if not found:
        return ()
    document = None
    try:
        data = spec.read_job_file(Path(job.file))
        if hashlib.sha256(data).hexdigest() == job.sha256:
            document = yamlsafe.parse(data)
    except (OSError, ValueError, yamlsafe.Refused):
        pass  # changed or gone since it loaded: the step's line will do
    return _locate(job.file, document, found)


def _locate(file: str, document: yamlsafe.Document | None,
            found: list[tuple[int, JsonPath, bool, str]]) -> tuple[Problem, ...]:
    """Problems in ``file`` at their paths in ``document`` (without one, at their lines)."""
    return tuple(sorted({
        Problem(file, *(document.where(path, key=at_key) if document else (line, 1)),
                f"{dotted(path)}: {message}")
        for line, path, at_key, message in found}))


"""Job files in, frozen ``Job`` objects out: safe YAML, JSON Schema, then semantic checks.

A file goes through four stages. Each reports located ``Problem``s (``FILE:LINE:COL``) and
never lets another exception out, whatever the bytes:

1. bytes: at most ``MAX_BYTES`` of a regular file (``_read``);
2. YAML: plain data and the position of every value, built safely (``pipeline.yamlsafe``);
3. JSON Schema: fast "valid?", and for an invalid document every error in words
   (``pipeline.schema``);
4. semantic checks the schema cannot express: needs and cycles, cron, zones, durations,
   expressions and what they look up, parameter defaults (``pipeline.checks``), with
   warnings for what loads but is likely a mistake (an ``at:`` in the past).

A set of files (``load_jobs``) is also checked as a whole: a ``uses: job`` step must name a
job that is there, with parameters it declares (``call_problems``), and an ``after:`` schedule
a job that is there, with no ring of jobs firing after each other (``after_problems``); the
daemon's catalog uses both. Given single files rather than a directory, a name outside them
is not judged: the jobs directory it will run in is not known.

The one settings file of a jobs directory (``kind: settings``, ``pipeline.settings``) is not
a job: ``load_jobs`` validates it as settings, and judges each job's ``pool:`` and ``email``
targets against it; its ``defaults`` are merged into every job's document before the job is
built (``settings.apply_defaults``). A directory without a settings file has no pools and no
SMTP server; single files without it are not judged on those.

Only a document that passed all of them becomes a ``Job``, frozen (``pipeline.build``).

"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pipeline import checks, jobgraph, params, yamlsafe
from pipeline.build import build_job
from pipeline.errors import JobInvalid, Problem, Severity, did_you_mean
from pipeline.model import Definition, Job, Settings
from pipeline.schema import Validators, dotted, validators
from pipeline.settings import apply_defaults, is_settings_file, settings_or_problems
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


# A `uses: job` step: where its `with` is, the line the step starts on, and its `with`.
_Call = tuple[JsonPath, int, Mapping[str, Any]]
_LISTS = ("steps", "on_success", "on_failure", "finally")  # where a job file lists steps


@dataclass(frozen=True)
class _Result:
    job: Job | None
    problems: tuple[Problem, ...]
    name: str | None = None  # the job's name, when it could be read
    name_mark: Mark = (1, 1)  # where it is written; 1:1 when it comes from the file name
    warnings: tuple[Problem, ...] = ()
    # An invalid file that the schema passed: its `uses: job` steps, to be judged with the
    # other files all the same, and the document that locates what is found in them.
    calls: tuple[_Call, ...] = ()
    document: yamlsafe.Document | None = None


def _read(path: Path) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file; OSError or ValueError with a message."""
    return yamlsafe.read_file(path, MAX_BYTES)


def _load(path: Path, schema: Validators, display: str, now: datetime,
          data: bytes | None = None, settings: Settings | None = None) -> _Result:
    warned: list[tuple[Mark, str]] = []

    def fail(problems: list[tuple[Mark, str]], name: str | None = None,
             name_mark: Mark = (1, 1), document: yamlsafe.Document | None = None) -> _Result:
        found = sorted({Problem(display, line, col, message)
                        for (line, col), message in problems})
        # The schema passed (a document is given only then): the shape of its steps is
        # sound, so its calls can be judged although other checks failed.
        calls = _document_calls(document) if document is not None else ()
        return _Result(None, tuple(found), name, name_mark, _warnings(display, warned),
                       calls, document if calls else None)

    try:
        data = _read(path) if data is None else data
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
    return _Result(job, (), job.name, name_mark, _warnings(display, warned))


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
    warnings are not raised, see ``load_jobs``), also for the settings file itself; a ``uses:
    job`` step is not checked against other files.
    """
    result = _load(path, validators(runner_schemas),
                   str(path) if display_path is None else display_path, datetime.now(UTC),
                   data, settings)
    if result.job is None:
        raise JobInvalid(result.problems)
    return result.job


# -- who holds a job name -----------------------------------------------------------------
# The daemon remembers in the state the last good version of each file that holds a job name
# (``watch.Catalog``). The daemon and the commands judge with these functions, so that they
# agree on which file holds a name and what a broken file still runs.

SETTINGS_NAME = ""  # the settings file's name among remembered definitions (CONTRACT §1)


def remembered_files(root: Path, definitions: Mapping[str, Definition]) -> dict[str, Definition]:
    """The state's ``definitions`` (by file relative to the jobs directory ``root``) by the
    file's path as ``find_job_files(root)`` gives it."""
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
    return load_job(Path(path), runner_schemas=runner_schemas, display_path=path,
                    data=known.source, settings=settings)


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
    """Load every job file in ``paths`` (directories are searched with ``find_job_files``).

    A job name wanted by several files is held by one of them; the others are invalid. With
    ``remembered`` (the last good versions the state keeps, by file path: see
    ``remembered_files``) the daemon's rule decides: the file that held the name keeps it,
    and an invalid file whose last good version still loads keeps holding that version's name
    (the version is in ``Loaded.kept``). Otherwise, and for a name no file held, the first
    file in path order holds it. So does a ``uses: job`` step that names a job not there or a
    parameter it does not declare
    (``call_problems``); when ``paths`` holds no directory, a call to a job outside the files
    given is not judged. ``now`` is what an ``at:`` in the past is measured from (default:
    the current time). Never raises for a bad file: its problems are in ``Loaded.problems``.

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


def _load_all(paths: Sequence[Path], schema: Validators, now: datetime,
              given: Settings | None, remembered: Mapping[str, Definition],
              runner_schemas: Mapping[str, Mapping[str, Any]] | None) -> Loaded:
    jobs: dict[str, Job] = {}
    problems: dict[str, tuple[Problem, ...]] = {}
    warnings: dict[str, tuple[Problem, ...]] = {}
    files: dict[str, str] = {}
    targets: list[Path] = []
    complete = any(path.is_dir() for path in paths)
    for path in paths:
        targets.extend(find_job_files(path) if path.is_dir() else [path])
    settings = given if given is not None else Settings() if complete else None
    job_files, settings, settings_files = _settings_among(targets, settings, problems)
    # Remembered files by absolute path: the paths given may be spelled another way.
    known_by_path = {os.path.abspath(file): known for file, known in remembered.items()}
    held = held_names(known_by_path)
    results: list[tuple[str, _Result]] = []
    good: dict[str, Job] = {}  # invalid file -> its last good version, when it still loads
    claimants: dict[str, list[str]] = {}  # job name -> the files that want it, in path order
    for path, data in job_files:
        display = str(path)
        result = _load(path, schema, display, now, data, settings)
        results.append((display, result))
        if result.warnings:
            warnings[display] = result.warnings
        kept_before = known_by_path.get(os.path.abspath(display))
        if result.job is None and kept_before is not None \
                and kept_before.name != SETTINGS_NAME:
            try:
                good[display] = last_good(display, kept_before, runner_schemas=runner_schemas,
                                          settings=settings)
            except JobInvalid:
                pass  # nothing of it runs: it is an invalid file like any other
        name = good[display].name if display in good else result.name
        if name is not None:
            files[display] = name
            claimants.setdefault(name, []).append(display)
    holders = {name: name_holder(keys, next(
        (key for key in keys if os.path.abspath(key) == held.get(name)), None))
        for name, keys in claimants.items()}
    kept: dict[str, Job] = {}
    for display, result in results:
        found = result.problems
        name = files.get(display)
        if name is not None and holders[name] != display:
            holder = holders[name]
            line, column = result.name_mark
            found = tuple(sorted({*found, Problem(display, line, column, name_taken(
                name, holder, held=held.get(name) == os.path.abspath(holder)))}))
        if found:
            problems[display] = found
            if name is not None and display in good and holders[name] == display:
                kept[name] = good[display]
        elif result.job is not None:
            jobs[result.job.name] = result.job
    known: dict[str, Job | None] = {**dict.fromkeys(files.values()), **jobs}
    for name, job in list(jobs.items()):
        calls = call_problems(job, known, complete=complete)
        if calls:
            del jobs[name]
            problems[job.file] = calls
    # A file invalid for other reasons gets its calls' errors too: all of them at once.
    for display, result in results:
        if result.calls and result.document is not None:
            flaws = _call_flaws(result.name, result.calls, known, complete=complete)
            if flaws:
                problems[display] = tuple(sorted({
                    *problems[display], *_locate(display, result.document, flaws)}))
    # Jobs fire after each other only across files: judged once the files are all read.
    for name, found in after_problems({**dict.fromkeys(files.values()), **jobs},
                                      complete=complete).items():
        file = jobs.pop(name).file
        problems[file] = tuple(sorted({*problems.get(file, ()), *found}))
    return Loaded(jobs, problems, files, warnings, settings, tuple(settings_files), kept)


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
            data: bytes | None = _read(path)
        except (OSError, ValueError):
            data = None  # _load says why
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
        data = _read(Path(job.file))
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


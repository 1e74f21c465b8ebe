"""Every exception pipeline raises on purpose, in one tree.

    PipelineError                 base; ``exit_code`` is what the CLI exits with
    ├── JobInvalid                a job file failed validation; carries its ``problems``
    │   └── SettingsInvalid       the settings file (``kind: settings``) failed validation
    ├── ParamError                a ``-p KEY=VALUE`` is unknown or does not fit its declaration
    ├── NotFound                  an unknown job, run or step (exit 1)
    ├── StateError                the state cannot be used (locked, newer schema, I/O, a
    │   │                         database that is down)
    │   ├── StateLocked           another daemon holds the state directory
    │   └── RunActive             a run is queued or running, so it cannot be deleted
    ├── ExpressionError           a ``${{ }}`` expression does not parse or fails; fails one step
    ├── RunnerError               a step runner refused its arguments or failed; fails one step
    ├── NotifyError               one try of a notification failed (the notifier retries)
    ├── UsageError                options a command cannot use (an unreadable --store-file)
    └── DaemonUnreachable         ``trigger``/``stop`` found no daemon to talk to

Most carry their message, written for the person who reads it (the CLI prints it after
``pipeline:``, the API puts it in ``{"error": {"message"}}``); the few that someone renders in
more than one way carry fields too: ``JobInvalid`` its located ``problems`` (lines in a
terminal, JSON, GitHub annotations), ``RunActive`` its ``run_id``. ``did_you_mean`` gives the
hint that messages about an unknown name end with.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"  # the file is invalid
    WARNING = "warning"  # the file loads and runs, but this is likely a mistake


@dataclass(frozen=True, order=True)
class Problem:
    """One located validation problem: ``FILE:LINE:COL: error: MESSAGE`` (line and column from
    1), or ``warning:`` for one that does not make the file invalid."""

    file: str
    line: int
    column: int
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, str | int]:
        return {"file": self.file, "line": self.line, "column": self.column,
                "message": self.message}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match among ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class PipelineError(Exception):
    """Base of every deliberate error; ``exit_code`` is the CLI's exit status for it."""

    exit_code = 1


class JobInvalid(PipelineError):
    """A job file (or a set of them) failed validation. ``problems`` holds every error found."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SettingsInvalid(JobInvalid):
    """The jobs directory's settings file failed validation. ``problems`` holds every error."""


class ParamError(PipelineError):
    """A parameter given on the command line or the API is unknown or ill-typed."""

    exit_code = 2


class NotFound(PipelineError):
    """An unknown job, run or step."""

    exit_code = 1


class StateError(PipelineError):
    """The state directory cannot be opened or written."""

    exit_code = 1


class StateLocked(StateError):
    """Another live daemon holds the state directory's lock."""


class RunActive(StateError):
    """The run is queued or running; it cannot be deleted. ``run_id`` names it."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} is still active; stop it first")


class ExpressionError(PipelineError):
    """An expression failed to parse or evaluate; the step that holds it fails with this message."""


class RunnerError(PipelineError):
    """A step runner failed in a way it explains itself (bad status, unreachable URL, ...)."""


class NotifyError(PipelineError):
    """One try of a notification failed; the message says why (secrets already masked by
    the notifier before it is shown)."""


class UsageError(PipelineError):
    """A command was given options it cannot use (an unreadable file, a bad value)."""

    exit_code = 2


class DaemonUnreachable(PipelineError):
    """No daemon answers at the recorded or given address."""

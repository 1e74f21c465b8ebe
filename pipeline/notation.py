"""The small notations inside a job file's strings: durations, times, schedules, ``${{ }}``.

``30s``, ``1h30m``, ``2026-12-01T09:00:00+01:00``, ``every 15m``, ``Europe/Berlin`` and
``${{ always() }}`` are read in two places: the semantic checks (``pipeline.checks``) try them
to report a located message, and building the model (``pipeline.spec``) reads them for their
values once the checks passed. Both use these functions, so the two cannot disagree; each
raises ``ValueError`` with the message a user sees.

The first three patterns are the ones ``schemas/job.schema.json`` uses (a test holds them
equal), so the schema and these readers accept the same strings.
"""

from __future__ import annotations

import functools
import math
import os
import re
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from pipeline import triggers
from pipeline.errors import did_you_mean
from pipeline.model import ScheduleKind

DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+|[0-9]+(\.[0-9]+)?)$"
EXPRESSION_PATTERN = r"^\s*\$\{\{.*\}\}\s*$"
AT_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
              r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?$")
# What each pattern means, in words, for messages.
DURATION_WORDS = "a duration such as 30s, 5m, 1h30m, 2d or 250ms, or a number of seconds"
EXPRESSION_WORDS = "a ${{ }} expression"
AT_WORDS = "an ISO 8601 time such as 2026-12-01T09:00:00+01:00"

MAX_DURATION = 100 * 365.25 * 86400.0  # longer is a typo, and overflows datetime arithmetic

_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_AT = re.compile(AT_PATTERN)


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``30s``, ``5m``, ``1h30m``, ``2d``, ``250ms`` or a number of seconds.

    Raises ValueError with a message for anything else, negative numbers included.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not {DURATION_WORDS}")
    if isinstance(value, str):
        return _duration_text(value)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    return _bounded(seconds, value)


def _bounded(seconds: float, value: object) -> float:
    if not 0 <= seconds <= MAX_DURATION:  # also refuses NaN
        raise ValueError(f"{value!r} is not a duration: it must be between 0 seconds and "
                         "100 years")
    return seconds


@functools.lru_cache(maxsize=1024)  # the same few durations recur in every file
def _duration_text(value: str) -> float:
    text = value.strip()
    if not _DURATION.match(text):
        raise ValueError(f"{value!r} is not {DURATION_WORDS}")
    if text[-1].isdigit():
        return _bounded(float(text), value)
    return _bounded(sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text)), value)


def parse_time(text: str, zone: tzinfo) -> datetime:
    """An ISO 8601 time; one without offset is read in ``zone``. ValueError if malformed."""
    if not _AT.match(text.strip()):
        raise ValueError(f"{text!r} is not {AT_WORDS}")
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise ValueError(f"{text!r} is not a real time (check the day, hour and offset)"
                         ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def schedule_form(text: str) -> tuple[ScheduleKind, str]:
    """How a schedule string reads: ``every 15m`` (or ``@every 15m``), ``@reboot`` (an event:
    each daemon start) or a cron expression."""
    if text.strip().lower() == "@reboot":
        return ScheduleKind.REBOOT, "@reboot"
    words = text.split(None, 1)
    if len(words) == 2 and words[0] in ("every", "@every"):
        return ScheduleKind.EVERY, words[1].strip()
    return ScheduleKind.CRON, text.strip()


def zone(name: str) -> ZoneInfo:
    """An IANA time zone; ValueError naming it (with a did-you-mean) if unknown."""
    try:
        return triggers.zone(name)
    except ValueError as exc:
        from zoneinfo import available_timezones  # reads the whole zone database: only here

        raise ValueError(f"{exc}{did_you_mean(name, available_timezones())}") from None


def local_zone() -> ZoneInfo:
    """The machine's time zone, for schedules that name none."""
    return _local_zone(os.environ.get("TZ"))


@functools.lru_cache(maxsize=8)
def _local_zone(tz_setting: str | None) -> ZoneInfo:
    # The machine's zone does not change under a running process, but TZ may (tests).
    return triggers.local_zone()


def unwrap(text: str) -> str:
    """A bare expression from ``text``, accepting one ``${{ }}`` around the whole of it.

    Raises ValueError when the text holds ``${{ }}`` in any other way.
    """
    stripped = text.strip()
    if stripped.startswith("${{") and stripped.endswith("}}"):
        inner = stripped[3:-2]
        if "${{" not in inner and "}}" not in inner:
            return inner.strip()
    if "${{" in text:
        raise ValueError("takes one expression: write it bare, or wrap all of it in one "
                         "${{ }}")
    return stripped

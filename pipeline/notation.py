"""The small notations inside a job file's strings: durations, times, time zones, schedules,
``${{ }}``.

``30s``, ``1h30m``, ``2026-12-01T09:00:00+01:00``, ``every 15m``, ``Europe/Berlin`` and
``${{ always() }}`` are read in two places: the semantic checks (``pipeline.checks``) try them
to report a located message, and building the model (``pipeline.spec``) reads them for their
values once the checks passed. Both use these functions, so the two cannot disagree; each
raises ``ValueError`` with the message a user sees. Durations are written back as a job file
writes them (``format_duration``) or, in messages, in one unit (``short_duration``); a
schedule without ``timezone:`` is in the machine's zone (``local_zone``).

The first three patterns are the ones ``schemas/job.schema.json`` uses (a test holds them
equal), so the schema and these readers accept the same strings.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError, available_timezones

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
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


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


def format_duration(seconds: float) -> str:
    """Seconds as the job file writes durations: 900 -> "15m", 5400 -> "1h30m",
    0.25 -> "250ms", 0 -> "0s". Rounded to the millisecond."""
    millis = round(seconds * 1000)
    sign = "-" if millis < 0 else ""
    millis = abs(millis)
    text = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                       ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            text += f"{count}{unit}"
    return sign + (text or "0s")


def short_duration(seconds: float) -> str:
    """A duration in one unit, for messages: whole days, hours or minutes when it is one
    (``5m``, ``1h``, ``2d``), else seconds (``90s``, ``0.25s``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


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


# -- time zones --------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``.

    Raises ``ValueError("unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)")``
    for anything that is not the name of a zone in the tz database: unknown names, empty
    strings, paths, directories.
    """
    found = _known_zone(name)
    if found is None:
        hint = did_you_mean(name, _zone_names()) if isinstance(name, str) and len(name) <= 255 \
            else ""
        raise ValueError(f"unknown time zone {name!r}{hint}")
    return found


def local_zone(*, environ: Mapping[str, str] | None = None,
               root: str | os.PathLike[str] = "/") -> ZoneInfo:
    """The machine's IANA time zone, for schedules that name none; never a fixed offset.

    In order: the ``TZ`` variable (a zone name or a zoneinfo path, with or without a leading
    ``:``; empty means UTC, as in POSIX); the target of the ``/etc/localtime`` symlink;
    ``/etc/timezone``; a zone whose file equals a copied ``/etc/localtime``; else UTC. A ``TZ``
    that names no IANA zone (a POSIX rule such as ``CET-1CEST``) is passed over for the files.
    ``environ`` and ``root`` exist for tests. Raises nothing.
    """
    if environ is None and root == "/":
        return _machine_zone(os.environ.get("TZ"))
    return _find_local_zone(os.environ if environ is None else environ, root)


@functools.lru_cache(maxsize=8)
def _machine_zone(tz_setting: str | None) -> ZoneInfo:
    # The machine's zone does not change under a running process, but TZ may (tests).
    return _find_local_zone(os.environ, "/")


def _find_local_zone(environ: Mapping[str, str], root: str | os.PathLike[str]) -> ZoneInfo:
    setting = environ.get("TZ")
    if setting is not None:
        setting = setting.removeprefix(":")
        if not setting:
            return ZoneInfo("UTC")
        name = _name_from_path(setting) if setting.startswith("/") else setting
        found = _known_zone(name)
        if found is not None:
            return found
    etc = Path(root, "etc")
    link = etc / "localtime"
    try:
        target = os.readlink(link)
    except OSError:
        target = None
    if target is not None:
        found = _known_zone(_name_from_path(target) or _name_from_path(os.path.realpath(link)))
        if found is not None:
            return found
    try:
        lines = (etc / "timezone").read_text().split()
    except (OSError, UnicodeDecodeError):
        lines = []
    found = _known_zone(lines[0] if lines else None)
    if found is not None:
        return found
    try:
        data = link.read_bytes()
    except OSError:
        return ZoneInfo("UTC")
    return _known_zone(_name_of_zone_file(data)) or ZoneInfo("UTC")


def _known_zone(name: str | None) -> ZoneInfo | None:
    """The zone ``name`` names in the tz database, None for anything else."""
    if (not isinstance(name, str) or len(name) > 255 or not _ZONE_NAME.fullmatch(name)
            or name not in _zone_names()):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _name_from_path(path: str) -> str | None:
    _, marker, name = path.rpartition("zoneinfo/")
    if not marker:
        return None
    # "right/" zones count leap seconds; the offsets they give on POSIX time are the same.
    for prefix in ("posix/", "right/"):
        name = name.removeprefix(prefix)
    return name


@functools.lru_cache(maxsize=4)
def _name_of_zone_file(data: bytes) -> str | None:
    # A copied /etc/localtime names no zone: find a zone file with the same bytes. Region/City
    # names come before legacy ones (CET, EST5EDT, Etc/...); equal files mean equal rules.
    names = sorted(_zone_names(), key=lambda name: ("/" not in name or name.startswith("Etc/"),
                                                    name))
    for name in names:
        for directory in TZPATH:
            try:
                if Path(directory, name).read_bytes() == data:
                    return name
            except OSError:
                continue
    return None


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # "localtime" is a link some systems put in the zoneinfo tree; it is not a zone name.
    return frozenset(available_timezones() - {"localtime"})

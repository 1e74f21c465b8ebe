"""Text in and out: run ids, ``KEY=VALUE`` pairs and ISO times read; tables, JSON and times
in a job's zone printed."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

import click

from pipeline.errors import NotFound
from pipeline.model import RUN_ID

if TYPE_CHECKING:
    from pipeline.model import Job


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise NotFound(f"no run {run_id!r}: run ids look like 20261128T201851-3f9a2c1b")
    return run_id


def parse_kv(pairs: Sequence[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="-p")
        given[key] = value
    return given


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


# A string shown without quotes: it cannot be read as another value, nor as two.
_BARE = re.compile(r"[\w./:@+~%*-]+")


def value_text(value: Any) -> str:
    """A parameter's value as JSON writes it (``true``, ``null``, ``0.5``, ``"a b"``), the way
    ``--json`` and the API show it; a plain word is left unquoted, as people write it."""
    if isinstance(value, str) and _BARE.fullmatch(value):
        try:
            json.loads(value)
        except ValueError:
            return value  # not a number, true, false or null when read back
    return json.dumps(value, ensure_ascii=False)


def local(moment: datetime | None, zone: tzinfo | None = None) -> str:
    """``2026-12-07 02:30:00+01:00``: the time in ``zone`` (default the machine's), with its
    offset, so a reader never has to guess which zone a time is in."""
    return moment.astimezone(zone).isoformat(sep=" ", timespec="seconds") if moment else "-"


def zone_of(job: Job | None) -> tzinfo | None:
    """The zone a job's times are shown in: its schedule's; None (the machine's) without one."""
    return job.schedules[0].timezone if job is not None and job.schedules else None


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                   .rstrip())


def parse_time(text: str, zone: Any) -> datetime:
    """An ISO 8601 time; without an offset it is read in ``zone``."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time "
                                 "(e.g. 2026-12-01T09:00:00+01:00)",
                                 param_hint="--after") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)

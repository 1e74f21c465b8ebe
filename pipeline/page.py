"""The status page: HTML rendered on the server from the API's own JSON shapes.

No build step and no external assets: Jinja2 templates in ``pipeline/templates`` with inline
CSS (light and dark, laptop and phone) and a few lines of inline JavaScript that refresh the
page in place and send the buttons' POSTs. The pages are fed the same dictionaries the JSON
API answers with, so what the page shows and what a script reads cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from pipeline import __version__

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _parse(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    """``3 min ago`` or ``in 2 h``: a time relative to ``now``, coarse enough to read at once."""
    moment = _parse(value)
    if moment is None:
        return "—"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = _span(abs(seconds))
    if text == "now":
        return "just now"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def _span(seconds: float) -> str:
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = seconds / size
            return f"{count:.0f} {unit}" if count >= 10 or unit == "min" else f"{count:.1f} {unit}"
    return f"{seconds:.0f} s"


def duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 10 min``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def local(value: str | datetime | None) -> str:
    """The time in the daemon's zone, with its offset: the tooltip behind every relative time."""
    moment = _parse(value)
    if moment is None:
        return ""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _since(start: str | None, now: datetime) -> float | None:
    moment = _parse(start)
    return None if moment is None else max((now - moment).total_seconds(), 0.0)


_env.filters.update(ago=ago, duration=duration, local=local)


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render ``templates/<template>`` with ``context`` plus the common names."""
    now = datetime.now(UTC)
    values = {"now": now, "version": __version__, "since": lambda s: _since(s, now),
              "token_required": False, "refresh": 0, **context}
    return _env.get_template(template).render(values)


def warm() -> None:
    """Compile every template now (about 30 ms each), so the first visitor does not wait."""
    for name in _env.list_templates(extensions=["html"]):
        _env.get_template(name)

"""What the API and the pages read of a run: its step logs in the state directory and the
steps its job declares. Jobs as they are shown are ``pipeline.views``'s (``pipeline list``
shares them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.runrecords import RunRecord

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_log(path: Path, offset: int, size: int) -> bytes:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(size)
    except FileNotFoundError:
        return b""


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_tail(path: Path, size: int, *, keep_colors: bool = False) -> tuple[str, int, int]:
    """The last ``size`` bytes as text from a line start, how much was left out, the size.

    Terminal escape sequences are removed, unless ``keep_colors`` (for ``ansi.to_html``)."""
    total = log_size(path)
    start = max(total - size, 0)
    data = read_log(path, start, size)
    if start and b"\n" in data:
        cut = data.index(b"\n") + 1
        data, start = data[cut:], start + cut
    text = data.decode(errors="replace")
    return (text if keep_colors else _ANSI.sub("", text)), start, total


def declared_steps(record: RunRecord) -> list[str]:
    """The step ids the run's job declares (its main DAG), from the stored document."""
    document = record.document or {}
    steps = document.get("steps") if isinstance(document, Mapping) else None
    if not isinstance(steps, Sequence):
        return []
    return [str(s["id"]) for s in steps if isinstance(s, Mapping) and "id" in s]


def declares(record: RunRecord, step_id: str) -> bool:
    document = record.document or {}
    ids = set(declared_steps(record))
    for key in ("on_success", "on_failure", "finally"):
        extra = document.get(key) if isinstance(document, Mapping) else None
        if isinstance(extra, Sequence):
            ids.update(str(s["id"]) for s in extra if isinstance(s, Mapping) and "id" in s)
    return step_id.split(".", 1)[0] in ids



"""Crash points, for the fault-injection tests: ``PIPELINE_CRASH_AT=POINT[:N]`` makes the
process ``os._exit(CRASH_EXIT)`` the N-th time (default 1st) it reaches ``crash_point(POINT)``.

Points: ``fire-claimed``, ``run-written``, ``step-spawning``, ``step-spawned``, ``log-write``
(half a chunk written), ``step-exited`` (before its state is committed), ``watermark-flush``
(before the commit that moves a watermark). Unset, a crash point costs one comparison.
"""

from __future__ import annotations

import os
import sys

CRASH_EXIT = 70
POINTS = ("fire-claimed", "run-written", "step-spawning", "step-spawned", "log-write",
          "step-exited", "watermark-flush")


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    return name, int(count) if count.isdigit() else 1


_target = _parse(os.environ.get("PIPELINE_CRASH_AT"))
_seen = 0


def crash_point(name: str) -> None:
    global _seen
    if _target is None or _target[0] != name:
        return
    _seen += 1
    if _seen >= _target[1]:
        sys.stderr.write(f"pipeline: crash point {name} reached ({_seen}): exiting\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT)


def armed(name: str) -> bool:
    """True if crash point ``name`` is the one set (lets a hot path do the test's extra work,
    such as writing half a chunk, only then)."""
    return _target is not None and _target[0] == name

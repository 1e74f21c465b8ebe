"""The offset between this machine's clock and the store's, as a node keeps it
(``pipeline.nodes.measured_offset``): a table of measurements, each a row.

A node stamps what it records (a run's end) by its clock corrected by that offset, while the
store stamps what it decides (the next run's start) by its own: an offset off by the wait of
one slow renewal once put a forbid job's two runs on top of each other in the history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.nodes import DRIFT, Offset, measured_offset

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def taken(offset_ms: float, trip_ms: float, *, at: float = 0.0,
          kept: Offset | None = None) -> Offset:
    """A measurement whose round trip took ``trip_ms``, the store's clock ``offset_ms``
    ahead, read halfway."""
    before = T0 + timedelta(seconds=at)
    after = before + ms(trip_ms)
    return measured_offset(kept, before, before + ms(trip_ms / 2 + offset_ms), after, at)


SHARP = Offset(ms(0), ms(1), 0.0)  # kept: right within a millisecond, measured at 0 s

CASES = [
    # (what, kept, measured offset ms, round trip ms, at s, expected offset ms, error ms)
    ("the first measurement is kept, whatever its trip", None, 40, 600, 0, 40, 300),
    ("a sharper one replaces it", Offset(ms(40), ms(300), 0), 2, 4, 1, 2, 2),
    ("an as sharp one replaces it", SHARP, 0.5, 2, 1, 0.5, 1),
    ("a vaguer one that agrees leaves it", SHARP, 200, 600, 1, 0, 1),
    ("... even one that waited a whole second", SHARP, 450, 1000, 5, 0, 1),
    ("a kept one grows vaguer with time: a minute on, a 100 ms trip replaces it",
     SHARP, 10, 100, 60, 10, 50),
    ("... but not 10 s on", SHARP, 10, 100, 10, 0, 1),
    ("one that disagrees beyond both errors replaces it (the clock was set)",
     SHARP, -30_000, 600, 1, -30_000, 300),
    ("... and one just within both errors does not", SHARP, 301, 600, 0, 0, 1),
]


@pytest.mark.parametrize(("what", "kept", "offset", "trip", "at", "value", "error"), CASES,
                         ids=[c[0] for c in CASES])
def test_measured_offset(what: str, kept: Offset | None, offset: float, trip: float,
                         at: float, value: float, error: float) -> None:
    found = taken(offset, trip, at=at, kept=kept)
    assert (found.value, found.error) == (ms(value), ms(error)), what


def test_a_kept_offset_grows_vaguer_by_the_drift_allowed() -> None:
    """A minute after a sharp measurement, its error counts for 1 ms + a minute of drift:
    a measurement right within that replaces it, one a millisecond vaguer does not."""
    grown = 1 + DRIFT * 60 * 1000  # ms
    assert taken(5, 2 * grown, at=60, kept=SHARP).value == ms(5)
    assert taken(5, 2 * grown + 2, at=60, kept=SHARP) is SHARP

"""The exception tree's helpers."""

from __future__ import annotations

from pipeline.errors import did_you_mean


def test_did_you_mean_names_the_closest_choice_or_nothing() -> None:
    assert did_you_mean("biuld", ["build", "test"]) == " (did you mean 'build'?)"
    assert did_you_mean("zzz", ["build", "test"]) == ""
    assert did_you_mean("x", []) == ""

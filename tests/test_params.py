"""Job parameters read directly: what fits a type, a declaration's checks and its ``Param``, a
value a ``uses: job`` step passes, and the limits on given values. (``test_spec`` covers
``parse_params`` through a loaded job file.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import spec
from pipeline.errors import ParamError
from pipeline.model import Job, Param, ParamType
from pipeline.params import (
    MAX_VALUE,
    declared,
    fits,
    infer_type,
    parse_params,
    problems,
    value_problem,
)

STRING, INTEGER, NUMBER, BOOLEAN = (ParamType.STRING, ParamType.INTEGER, ParamType.NUMBER,
                                    ParamType.BOOLEAN)


# -- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind"), [
    (True, BOOLEAN), (False, BOOLEAN),   # before int: bool is an int in Python
    (0, INTEGER), (-7, INTEGER), (2.0, NUMBER), (0.5, NUMBER),
    ("3", STRING), ("", STRING), (None, STRING),
])
def test_a_type_is_inferred_from_the_default(value: Any, kind: ParamType) -> None:
    assert infer_type(value) is kind


@pytest.mark.parametrize(("value", "kinds"), [
    (3, {INTEGER, NUMBER}),
    (3.0, {INTEGER, NUMBER}),          # a whole float is an integer (JSON has one number type)
    (3.5, {NUMBER}),
    (True, {BOOLEAN}),                 # true is not a number, nor 1
    ("3", {STRING}),
    (None, set()), ([1], set()), ({"a": 1}, set()),
])
def test_what_fits_each_type(value: Any, kinds: set[ParamType]) -> None:
    assert {kind for kind in ParamType if fits(value, kind)} == kinds


# -- declarations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("declaration", "param"), [
    (None, Param("p")),
    (5, Param("p", INTEGER, 5, True)),                      # a bare default
    ("x", Param("p", STRING, "x", True)),
    (False, Param("p", BOOLEAN, False, True)),
    ({}, Param("p")),
    ({"default": 1.5}, Param("p", NUMBER, 1.5, True)),
    ({"type": "integer", "default": 2.0}, Param("p", INTEGER, 2, True)),  # made an int
    ({"type": "number", "default": 2}, Param("p", NUMBER, 2, True)),
    ({"enum": ["a", "b"]}, Param("p", STRING, None, False, ("a", "b"))),
    ({"type": "integer", "required": True, "description": "how many"},
     Param("p", INTEGER, None, False, None, "how many", True)),
    ({"default": None}, Param("p", STRING, None, True)),    # a default of nothing is one
])
def test_a_declaration_becomes_its_param(declaration: Any, param: Param) -> None:
    assert declared("p", declaration) == param


def test_an_integer_default_written_as_a_float_is_an_int() -> None:
    default = declared("p", {"type": "integer", "default": 2.0}).default
    assert type(default) is int


@pytest.mark.parametrize(("declaration", "found"), [
    ({"type": "integer", "default": "3"},
     [(("default",), "'3' is not an integer (the type is integer)")]),
    ({"type": "number", "default": True},
     [(("default",), "true is not a number (the type is number)")]),
    ({"type": "boolean", "default": 0},
     [(("default",), "0 is not true or false (the type is boolean)")]),
    ({"type": "string", "default": 5},
     [(("default",), "5 is not a string (the type is string)")]),
    ({"type": "integer", "enum": [1, "2", True], "default": 1},
     [(("enum", 1), "'2' is not an integer (the type is integer)"),
      (("enum", 2), "true is not an integer (the type is integer)")]),
    ({"enum": ["a", "b"], "default": "c"},
     [(("default",), "'c' is not one of the enum values 'a', 'b'")]),
    # Without a type, the default's own type is the type: the enum must fit it.
    ({"enum": ["a", 2], "default": 1},
     [(("enum", 0), "'a' is not an integer (the type is integer)"),
      (("default",), "1 is not one of the enum values 'a', 2")]),
    ({"type": "integer", "default": 2.5},
     [(("default",), "2.5 is not an integer (the type is integer)")]),
])
def test_a_declaration_that_refuses_its_own_default_or_enum_is_found(
        declaration: dict[str, Any], found: list[tuple[tuple[Any, ...], str]]) -> None:
    assert list(problems(declaration)) == found


@pytest.mark.parametrize("declaration", [
    None, 5, "x", {}, {"type": "integer", "default": 2.0}, {"enum": [1, 2], "default": 2},
    {"type": "number", "enum": [1, 2.5]}, {"required": True},
    {"type": "bogus", "default": 1},    # the schema refuses the type: not said twice
    {"type": ["integer"], "default": "x"},
])
def test_a_sound_declaration_or_one_the_schema_refuses_has_no_problems_here(
        declaration: Any) -> None:
    assert list(problems(declaration)) == []


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10),
                    st.floats(-10, 10, allow_nan=False).map(lambda f: round(f, 1)),
                    st.sampled_from(["", "a", "1", "true", "${{ x }}"]))


@st.composite
def declarations(draw: st.DrawFn) -> dict[str, Any]:
    declaration: dict[str, Any] = {}
    if draw(st.booleans()):
        declaration["type"] = draw(st.sampled_from([t.value for t in ParamType]))
    if draw(st.booleans()):
        declaration["enum"] = draw(st.lists(scalars, min_size=1, max_size=4))
    if draw(st.booleans()):
        declaration["default"] = draw(st.sampled_from(declaration["enum"])
                                      if "enum" in declaration and draw(st.booleans())
                                      else scalars)
    return declaration


@settings(max_examples=100, deadline=None)
@given(declarations())
def test_a_declaration_without_problems_never_refuses_its_own_default(
        declaration: dict[str, Any]) -> None:
    """What the module promises: a declaration that loads can never refuse its own default."""
    if list(problems(declaration)):
        return
    param = declared("p", declaration)
    if param.has_default:
        assert value_problem(param, param.default) is None, (declaration, param)


# -- values a step passes ------------------------------------------------------------------------


@pytest.mark.parametrize(("param", "value", "problem"), [
    (Param("n", INTEGER), 3, None),
    (Param("n", INTEGER), 3.0, None),
    (Param("n", INTEGER), "+3", None),
    (Param("n", INTEGER), " 7 ", None),
    (Param("n", INTEGER), "0x10", "'0x10' is not an integer"),
    (Param("n", INTEGER), 2.5, "2.5 is not an integer"),
    (Param("n", INTEGER), None, "nothing (null) is not an integer"),
    (Param("n", INTEGER), [1], "a list is not an integer"),
    (Param("n", INTEGER), True, "true is not an integer"),
    (Param("x", NUMBER), "1e3", None),
    (Param("x", NUMBER), "-0", None),
    (Param("x", NUMBER), "inf", "'inf' is not a number"),
    (Param("x", NUMBER), "NaN", "'NaN' is not a number"),
    (Param("b", BOOLEAN), " On ", None),
    (Param("b", BOOLEAN), "", "'' is not a boolean (true/false, yes/no, 1/0)"),
    (Param("b", BOOLEAN), 1, "1 is not true or false"),
    (Param("s", STRING), 5, "5 is not a string"),
    (Param("s", STRING, enum=("a", "b")), "c", "'c' is not one of 'a', 'b'"),
    (Param("n", INTEGER, enum=(1, 2)), 2.0, None),
    (Param("n", INTEGER, enum=(1, 2)), "3", "3 is not one of 1, 2"),
    # Only the run knows what an expression gives: nothing to say before it.
    (Param("n", INTEGER), "${{ steps.a.outputs.n }}", None),
    (Param("s", STRING, enum=("a",)), "x${{ params.y }}", None),
])
def test_a_value_a_step_passes_is_checked_against_the_param(param: Param, value: Any,
                                                            problem: str | None) -> None:
    assert value_problem(param, value) == problem


# -- given values ----------------------------------------------------------------------------------


@pytest.fixture
def job(tmp_path: Path) -> Job:
    path = tmp_path / "job.yaml"
    path.write_text("params:\n  note: {}\n  n: {type: number}\n  when: {type: string, "
                    "default: now}\nsteps:\n  - {id: s, run: 'true'}\n")
    return spec.load_job(path)


def test_a_number_given_as_text_keeps_its_written_kind(job: Job) -> None:
    values = parse_params(job, {"n": "10"})
    assert values["n"] == 10 and type(values["n"]) is int
    values = parse_params(job, {"n": "10.0"})
    assert values["n"] == 10.0 and type(values["n"]) is float


def test_a_value_of_max_length_is_taken_and_one_longer_is_not(job: Job) -> None:
    assert parse_params(job, {"note": "x" * MAX_VALUE})["note"] == "x" * MAX_VALUE
    with pytest.raises(ParamError, match=re.escape(
            f"parameter 'note': longer than {MAX_VALUE} characters")):
        parse_params(job, {"note": "x" * (MAX_VALUE + 1)})


def test_a_nul_character_is_refused_as_no_program_could_take_it(job: Job) -> None:
    with pytest.raises(ParamError, match="parameter 'note': contains a NUL character"):
        parse_params(job, {"note": "a\0b"})


def test_a_given_null_is_not_replaced_by_the_default(job: Job) -> None:
    """A JSON null from the API is a value given: it is checked, not taken for absence."""
    with pytest.raises(ParamError, match="parameter 'when': nothing \\(null\\) is not a string"):
        parse_params(job, {"when": None})
    assert parse_params(job, {})["when"] == "now"

import json
import subprocess
import time
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import expr
from pipeline.errors import ExpressionError


def context(**overrides: Any) -> dict[str, Any]:
    """A run's expression context, as the engine builds it."""
    ctx: dict[str, Any] = {
        "params": MappingProxyType({"target": "prod", "keep_days": 14, "codes": (200, 204),
                                    "flags": "-l -a", "debug": False, "none": None}),
        "env": {"PGHOST": "db.internal"},
        "secrets": {"TOKEN": "s3cret-token"},
        "steps": {
            "build": {"status": "succeeded",
                      "outputs": {"version": "1.2.3", "items": "3", "keys": "k"}},
            "my-step": {"status": "failed", "outputs": {}},
        },
        "run": {"id": "20260101T020000-0123abcd", "trigger": "schedule",
                "fire_time": "2026-01-01T02:00:00+01:00"},
        "job": {"name": "nightly-backup"},
        "success": lambda: True,
        "failure": lambda: False,
        "always": lambda: True,
        "cancelled": lambda: False,
    }
    ctx.update(overrides)
    return ctx


# -- evaluate ------------------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "expected"), [
    ("params.target", "prod"),
    ("params.keep_days + 1", 15),
    ("params.codes", [200, 204]),
    ("env.PGHOST", "db.internal"),
    ("secrets.TOKEN", "s3cret-token"),
    ("steps.build.outputs.version", "1.2.3"),
    ("steps.build.status", "succeeded"),
    ("steps['my-step'].status", "failed"),
    ("steps['my-step'].outputs.version | default('none')", "none"),
    ("steps.later.outputs.version | default('none')", "none"),
    ("run.id", "20260101T020000-0123abcd"),
    ("run.fire_time[:4]", "2026"),
    ("run.trigger == 'schedule'", True),
    ("job.name | upper", "NIGHTLY-BACKUP"),
    ("item * 2", 42),
    ("params.target == 'prod' and steps.build.status == 'succeeded'", True),
    ("params.target in ['prod', 'staging']", True),
    ("not params.debug", True),
    ("params.none is none", True),
    ("params.codes | tojson", "[200,204]"),
    ("'[1, {\"a\": 2}]' | fromjson", [1, {"a": 2}]),
    ("range(3)", [0, 1, 2]),
    ("params.codes | map('string') | list", ["200", "204"]),
    ("{'a': params.codes}", {"a": [200, 204]}),
    ("success()", True),
    ("success() and not failure()", True),
    ("always() or cancelled()", True),
    ("${{ success() }}", True),
    ("  ${{ params.keep_days > 10 }}  ", True),
])
def test_evaluate(expression: str, expected: Any) -> None:
    assert expr.evaluate(expression, context(item=21)) == expected


def test_evaluate_gives_plain_data() -> None:
    value = expr.evaluate("params", context())
    assert type(value) is dict
    assert type(value["codes"]) is list


def test_a_mapping_key_wins_over_a_method_of_the_mapping() -> None:
    assert expr.evaluate("steps.build.outputs.items", context()) == "3"
    assert expr.evaluate("steps.build.outputs['keys']", context()) == "k"


def test_context_callables_are_called_each_time() -> None:
    calls = []

    def success() -> bool:
        calls.append(1)
        return False

    assert expr.evaluate("success()", context(success=success)) is False
    assert expr.evaluate("success()", context(success=success)) is False
    assert len(calls) == 2


def test_a_status_function_must_be_called() -> None:
    with pytest.raises(ExpressionError, match=r"gives a function.*success\(\)"):
        expr.evaluate("success", context())


@pytest.mark.parametrize(("expression", "message"), [
    ("steps.biuld.status == 'succeeded'",
     "steps.biuld is undefined (did you mean steps.build?)"),
    ("steps.biuld", "steps.biuld is undefined (did you mean steps.build?)"),
    ("parmas.target", "parmas is undefined (did you mean params?)"),
    ("steps.build.outputs.vresion",
     "steps.build.outputs.vresion is undefined (did you mean steps.build.outputs.version?)"),
    ("steps['my-step'].outputs.version ~ 'x'",
     "steps['my-step'].outputs.version is undefined (there is nothing there)"),
    ("[params.zzz]", "params.zzz is undefined (there is: codes, debug, flags"),
    ("params.target.nope", "params.target.nope is undefined (a str has no 'nope')"),
    ("item", "item is undefined"),
    ("not steps.x", "steps.x is undefined"),
    ("params.codes[5]", "params.codes[5] is undefined (the list has 2 items)"),
])
def test_undefined_names_the_path(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        expr.evaluate(expression, context())
    assert f'expression "{expression}" failed: {message}' in str(caught.value)


@pytest.mark.parametrize(("expression", "message"), [
    ("1 / 0", "ZeroDivisionError"),
    ("params.target + 1", "TypeError"),
    ("'x' | fromjson", "JSONDecodeError"),
    ("params.target(", "does not parse"),
    ("success() && failure()", "does not parse: unexpected char '&'"),
])
def test_any_failure_is_an_expression_error(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        expr.evaluate(expression, context())


def test_evaluate_takes_one_expression() -> None:
    with pytest.raises(ExpressionError, match="must be one expression"):
        expr.evaluate("${{ success() }} and ${{ always() }}", context())


# -- the sandbox ---------------------------------------------------------------------------

@pytest.mark.parametrize("expression", [
    "''.__class__.__mro__",
    "''.__class__.__mro__[1].__subclasses__()",
    "params.__class__",
    "success.__globals__",
    "success.__code__",
    "(1).__class__.__base__",
    "range.__self__",
    "'{0.__class__}'.format(1)",
    "'{0.__globals__}'.format(success)",
    "dict.mro()",
    "params.codes.__len__()",
    "steps.build.outputs.update({'x': 1})",
    "env.PGHOST.__add__",
    "lipsum(10)",
    "cycler(1, 2)",
    "self._TemplateReference__context",
])
def test_sandbox_escapes_are_blocked(expression: str) -> None:
    with pytest.raises(ExpressionError):
        expr.evaluate(expression, context())


def test_list_mutation_is_blocked() -> None:
    codes = [200]
    with pytest.raises(ExpressionError, match="unsafe"):
        expr.evaluate("codes.append(1)", context(codes=codes))
    assert codes == [200]


@pytest.mark.parametrize("expression", [
    "'a' * 10**10",
    "10**10 * 'a'",
    "'abc' * 400000",
    "[1, 2] * 10**9",
    "range(10**9) | list",
    "range(10**9)",
    "9 ** (9 ** 9)",
    "2 ** 10000000",
    "'%0999999999d' % 1",
    "'%.999999999f' % 1.5",
    "'%*d' % (999999999, 1)",
    "'x'.center(10**9)",
    "'x'.zfill(width=10**9)",
])
def test_huge_results_are_refused_fast(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError):
        expr.evaluate(expression, context())
    assert time.perf_counter() - started < 1


def test_moderate_repetition_and_powers_still_work() -> None:
    assert expr.evaluate("'=' * 40", context()) == "=" * 40
    assert expr.evaluate("2 ** 64", context()) == 2**64
    assert expr.evaluate("'%05d' % 42", context()) == "00042"
    assert expr.evaluate("(-1) ** 1001", context()) == -1


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.()[]{}'\"|*+-/%~ 0123456789=<>!,:", max_size=30))
def test_evaluate_raises_only_expression_error(source: str) -> None:
    try:
        expr.evaluate(source, {"a": [1, "x"], "b": {"a": 2}})
    except ExpressionError:
        pass


# -- check_template / check_expression -----------------------------------------------------

@pytest.mark.parametrize("text", [
    "no expressions at all",
    "echo ${{ params.target }}",
    "a ${{ x }} b ${{ y | default('z') }} c",
    "${{ {'a': {'b': 1}} }}",
    "${{ '}}' ~ x }}",
    "docker inspect -f '{{.State.Running}}' db; echo }} {{ {% x %} {# y",
    "echo ${#arr[@]} ${HOME} $((1 + 2))",
    "${{ steps['my-step'].outputs.version }}",
    "${{ params.flags | raw }}",
    "${{ '${{' }}",
])
def test_check_template_accepts(text: str) -> None:
    assert expr.check_template(text) is None


@pytest.mark.parametrize(("text", "message"), [
    ("find -mtime +${{ params.( }}", 'expression "params.(" does not parse: '
                                     "expected name or number"),
    ("echo ${{ params.x", '"${{" at offset 5 has no closing "}}"'),
    ("a ${{ }} b", 'empty "${{ }}" at offset 2'),
    ("${{ a b }}", 'expression "a b" does not parse: unexpected \'b\''),
    ("${{ x | lowr }}", "unknown filter 'lowr'"),
    ("${{ x is nonesuch }}", "unknown test 'nonesuch'"),
    ("${{ (a }}", "unexpected end of expression, expected ')'"),
    ("${{ 'abc }}", "does not parse"),
    ("ok ${{ a }} then ${{ b + }}", 'expression "b +" does not parse'),
])
def test_check_template_names_the_bad_expression(text: str, message: str) -> None:
    problem = expr.check_template(text)
    assert problem is not None
    assert message in problem


@pytest.mark.parametrize("text", [
    "success()", "${{ failure() }}", " always() or cancelled() ",
    "params.target == 'prod' and steps.build.status == 'succeeded'",
])
def test_check_expression_accepts(text: str) -> None:
    assert expr.check_expression(text) is None


@pytest.mark.parametrize(("text", "message"), [
    ("success() && failure()", "unexpected char '&'"),
    ("params.(", "expected name or number"),
    ("", "empty expression"),
    ("${{ a }} and ${{ b }}", "must be one expression"),
    ("x ${{ a }}", "must be one expression"),
    ("${{ a", 'has no closing "}}"'),
])
def test_check_expression_rejects(text: str, message: str) -> None:
    problem = expr.check_expression(text)
    assert problem is not None
    assert message in problem


def test_check_template_is_fast() -> None:
    plain = [f"echo line {i} with {{{{ braces }}}} and $HOME" for i in range(2000)]
    templated = [f"echo ${{{{ params.p{i} | default('x') }}}} > /tmp/{i}" for i in range(2000)]
    started = time.perf_counter()
    assert all(expr.check_template(t) is None for t in plain)
    assert all(expr.check_template(t) is None for t in templated)
    assert all(expr.check_template(t) is None for t in templated)  # cached
    assert time.perf_counter() - started < 2


# -- render --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("plain", "plain"),
    ("v=${{ params.target }}", "v=prod"),
    ("${{ params.debug }} ${{ not params.debug }}", "false true"),
    ("[${{ params.none }}]", "[]"),
    ("${{ params.keep_days }} ${{ 1.5 }}", "14 1.5"),
    ("${{ params.codes }}", "[200,204]"),
    ("${{ {'a': 1} }}", '{"a":1}'),
    ("${{'x'}}${{'y'}}", "xy"),
    ("${{ '${{' }} x }}", "${{ x }}"),
    ("multi\nline ${{\n  params.target\n}}\n", "multi\nline prod\n"),
])
def test_render(text: str, expected: str) -> None:
    assert expr.render(text, context()) == expected


def test_render_script_quotes_every_value_outside_quotes() -> None:
    script = expr.render_script(
        "rm -rf /tmp/${{ params.target }} ${{ params.flags }} ${{ 'a b' }}", context())
    assert script == "rm -rf /tmp/prod '-l -a' 'a b'"


def test_raw_opts_out_of_quoting() -> None:
    script = expr.render_script(
        "ls ${{ params.flags | raw }} ${{ params.flags | raw | upper }}", context())
    assert script == "ls -l -a '-L -A'"


HOSTILE = [
    "$(rm -rf /)", "`rm -rf /`", "'; rm -rf / #", '"; rm -rf / #', "a\nb\nrm -rf /",
    "; echo pwned", "&& echo pwned", "| cat /etc/passwd", "$HOME ${PATH} $((1+1))", "\\",
    "-n", "", " leading and trailing ", "*", "~root", "!!", "a'b\"c", "é\t\u2028",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_prints_literally_in_bash(value: str) -> None:
    script = expr.render_script("printf '%s' ${{ params.v }}", context(params={"v": value}))
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script],
                          capture_output=True, text=True, check=True, cwd="/")
    assert done.stdout == value


def test_hostile_values_inside_a_list_print_literally() -> None:
    script = expr.render_script("printf '%s' ${{ params.v }}",
                                context(params={"v": HOSTILE}))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == HOSTILE


def test_render_errors_are_expression_errors() -> None:
    with pytest.raises(ExpressionError, match=r"steps\.nope is undefined"):
        expr.render("echo ${{ steps.nope.outputs.x }}", context())
    with pytest.raises(ExpressionError, match="does not parse"):
        expr.render("echo ${{ a. }}", context())


# -- render_value --------------------------------------------------------------------------

def test_render_value_gives_native_values_for_a_lone_expression() -> None:
    data = MappingProxyType({
        "url": "https://x/${{ job.name }}",
        "expect_status": "${{ params.codes }}",
        "retries": "  ${{ params.keep_days }}\n",
        "flag": "${{ params.debug }}",
        "headers": MappingProxyType({"Authorization": "Bearer ${{ secrets.TOKEN }}"}),
        "list": ("${{ item }}", "n=${{ item }}", 3, None, True),
        "two": "${{ 1 }}${{ 2 }}",
    })
    assert expr.render_value(data, context(item=7)) == {
        "url": "https://x/nightly-backup",
        "expect_status": [200, 204],
        "retries": 14,
        "flag": False,
        "headers": {"Authorization": "Bearer s3cret-token"},
        "list": [7, "n=7", 3, None, True],
        "two": "12",
    }


def test_render_value_returns_plain_containers() -> None:
    value = expr.render_value(MappingProxyType({"a": ({"b": "${{ params.codes }}"},)}),
                              context())
    assert type(value) is dict
    assert type(value["a"]) is list
    assert type(value["a"][0]["b"]) is list


def test_render_value_errors_are_expression_errors() -> None:
    with pytest.raises(ExpressionError, match="nope is undefined"):
        expr.render_value({"a": ["${{ nope }}"]}, context())

"""What `validate` finds before a run would: lookups that can never succeed, calls to other
jobs, schedules that never fire or fire too often, and warnings (pipeline.checks, spec)."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import jobset, spec
from pipeline.cli import main
from pipeline.errors import JobInvalid, Problem, Severity
from pipeline.watch import Catalog

CORPUS = Path(__file__).parent / "corpus"
WARN = sorted((CORPUS / "warn").glob("*.yaml"))
EXPECT = re.compile(r"# expect: (\d+):(\d+) (.+)")
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def found(tmp_path: Path, text: str) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of one job file, as `pipeline validate FILE` sees them."""
    path = write(tmp_path / "job.yaml", text)
    loaded = jobset.load_jobs([path], now=NOW)
    return list(loaded.problems.get(str(path), ())), list(loaded.warnings.get(str(path), ()))


def where(problems: list[Problem]) -> list[tuple[int, int, str]]:
    return [(p.line, p.column, p.message) for p in problems]


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# -- the corpus of files that load with warnings --------------------------------------------


def test_the_warning_corpus_is_there() -> None:
    assert len(WARN) >= 4


@pytest.mark.parametrize("path", WARN, ids=lambda p: p.name)
def test_a_warned_file_is_valid_and_warns_where_it_is(path: Path) -> None:
    expected = EXPECT.match(path.read_text(encoding="utf-8").splitlines()[0])
    assert expected, f"{path.name} must start with '# expect: LINE:COL message'"
    spec.load_job(path)  # valid: a warning never refuses a file
    loaded = jobset.load_jobs([path], now=NOW)
    assert loaded.problems == {}
    first = loaded.warnings[str(path)][0]
    assert first.severity is Severity.WARNING
    assert (first.line, first.column) == (int(expected[1]), int(expected[2])), str(first)
    assert expected[3] in first.message
    assert str(first).startswith(f"{path}:{first.line}:{first.column}: warning: ")


# -- lookups that can succeed are never reported -------------------------------------------


def test_every_lookup_that_can_succeed_passes(tmp_path: Path) -> None:
    errors, warnings = found(tmp_path, """
        params:
          target: {type: string, default: staging}
          codes: {type: string, default: "[200]"}
          step: {type: string, default: build}
        secrets:
          TOKEN: {env: API_TOKEN}
        env:
          REGION: eu
          URL: "https://${{ params.target }}.internal/${{ secrets.TOKEN }}"
        steps:
          - id: build
            run: echo "version=1" >> "$PIPELINE_OUTPUT"
          - id: my-step
            needs: [build]
            env: {WHERE: "${{ env.REGION }}-${{ steps.build.outputs.version }}"}
            cwd: /tmp/${{ env.WHERE }}
            run: echo ${{ env.REGION }} ${{ env.WHERE }} ${{ run.id }} ${{ run.fire_time }}
          - id: fan
            needs: [my-step]
            for_each: ${{ steps.build.outputs.version | fromjson | list }}
            if: ${{ always() and not cancelled() and steps['my-step'].status == 'succeeded' }}
            env: {ITEM: "${{ item }}"}
            exec: [echo, "${{ item.name }}", "${{ job.name }}", "${{ range(3) | list }}"]
          - id: call
            needs: [fan]
            uses: http
            with:
              url: https://x.invalid/${{ steps.fan.items | length }}/${{ params.target }}
              expect_status: "${{ params.codes | fromjson }}"
              headers: {X-Build: "${{ steps.build.outputs.version }}"}
          - id: dynamic
            needs: [build]
            run: echo ${{ steps[params.step].status }} ${{ dict(a=1) | tojson }}
          - id: guarded
            needs: [build]
            if: ${{ success() and (steps.build.outputs.flag | default('no')) == 'no' }}
            run: echo ${{ params.target is defined }}
        on_failure:
          - id: alert
            run: echo ${{ steps.build.status }} ${{ steps['my-step'].outputs.x }} ${{ failure() }}
        finally:
          - id: cleanup
            run: echo ${{ steps.alert.outputs.sent | default('') }} ${{ steps.call.status }}
        outputs:
          version: ${{ steps.build.outputs.version }}
          fanned: ${{ steps.fan.outputs.x }}
    """)
    assert (errors, warnings) == ([], [])


# -- lookups that cannot -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    # the same name twice in one string: each one reported where it is
    ("""
     steps:
       - {id: a, run: "echo ${{ params.x }} and ${{ params.x }}"}
     """, [(2, 28, "steps[0].run: params.x: there is no parameter 'x' (the job declares no "
                  "params)"),
           (2, 48, "steps[0].run: params.x: there is no parameter 'x' (the job declares no "
                   "params)")]),
    # a double-quoted string with escapes before the expression, and a folded one
    ("""
     steps:
       - id: a
         run: "printf 'a\\tb' ${{ parms.x }}"
       - id: b
         run: >
           echo one
           two ${{ steps.b.outputs.x }}
     """, [(3, 29, "steps[0].run: unknown name 'parms' (did you mean 'params'?); an "
                   "expression reads params, env, secrets, steps, run, job"),
           (7, 15, "steps[1].run: steps.b: that is step 'b' itself, whose values are not "
                   "there while it runs")]),
    ("""
     steps:
       - id: each
         for_each: [1, 2]
         if: ${{ item == 1 }}
         run: "true"
     """, [(4, 13, "steps[0].if: item is not defined in if: (it is evaluated once for the "
                   "whole step, before its items)")]),
    ("""
     steps:
       - {id: a, run: "echo ${{ steps.alert.outputs.x }}"}
     on_failure:
       - {id: alert, run: "true"}
     on_success:
       - {id: yay, run: "echo ${{ steps.alert.status }}"}
     """, [(2, 28, "steps[0].run: steps.alert: 'alert' is a step of on_failure, which runs "
                   "after the steps"),
           (6, 30, "on_success[0].run: steps.alert: 'alert' is a step of on_failure; "
                   "on_success and on_failure never both run")]),
    ("""
     steps:
       - {id: a, run: "true"}
       - {id: b, needs: [a], run: "echo ${{ steps.a.items }} ${{ run.fire_tme }}"}
     """, [(3, 40, "steps[1].run: steps.a.items: a step has status and outputs"),
           (3, 61, "steps[1].run: run.fire_tme: run has id, fire_time, trigger, event, "
                   "upstream (did you mean 'fire_time'?)")]),
    ("""
     steps:
       - {id: a, run: "true", if: "always() or failed()"}
     """, [(2, 43, "steps[0].if: unknown function failed() (did you mean failure()?)")]),
])
def test_lookups_that_can_never_succeed_are_errors_where_they_are_written(
        tmp_path: Path, text: str, expected: list[tuple[int, int, str]]) -> None:
    errors, warnings = found(tmp_path, text)
    got = where(errors)
    assert [g[:2] for g in got] == [e[:2] for e in expected], got
    for (_, _, message), (_, _, wanted) in zip(got, expected, strict=True):
        assert message.startswith(wanted), message
    assert warnings == []


def test_an_expression_error_is_reported_once_not_also_as_a_lookup(tmp_path: Path) -> None:
    errors, _ = found(tmp_path, """
        steps:
          - {id: a, run: "echo ${{ steps.nope.outputs. }}"}
    """)
    assert len(errors) == 1 and "does not parse" in errors[0].message


# -- schedules and retries -------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "message"), [
    ("every 500ms", "schedule: '500ms' is shorter than 1s"),
    ("{every: 0.25}", "schedule.every: 0.25 is shorter than 1s"),
    ("[{cron: '* * * * *'}, {every: 999ms, jitter: 1s}]", "schedule[1].every: '999ms' is "
                                                          "shorter than 1s"),
])
def test_an_interval_under_a_second_is_an_error(tmp_path: Path, schedule: str,
                                                message: str) -> None:
    errors, _ = found(tmp_path, f"schedule: {schedule}\nsteps:\n  - {{id: a, run: 'true'}}\n")
    assert next(p.message for p in errors if "shorter" in p.message).startswith(message)


def test_one_second_and_a_jitter_within_the_interval_are_fine(tmp_path: Path) -> None:
    assert found(tmp_path, """
        schedule:
          - every 1s
          - {every: 1m, jitter: 1m}
          - {at: "2026-06-02T00:00:00", timezone: Europe/Berlin}
        steps:
          - {id: a, run: "true"}
    """) == ([], [])


def test_at_in_the_past_is_measured_from_now(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", """
        schedule: {at: "2026-06-01T09:00:00", timezone: Europe/Berlin}
        steps:
          - {id: a, run: "true"}
    """)
    before = jobset.load_jobs([path], now=datetime(2026, 6, 1, 6, 59, tzinfo=UTC))
    after = jobset.load_jobs([path], now=datetime(2026, 6, 1, 7, 1, tzinfo=UTC))
    assert before.warnings == {}
    assert [(p.line, p.column) for p in after.warnings[str(path)]] == [(1, 16)]
    assert "in the past" in after.warnings[str(path)][0].message
    assert set(after.jobs) == {"job"}


@pytest.mark.parametrize(("retries", "where", "message"), [
    ("101", (1, 10), "retries: must be at most 100, got 101"),
    ("{limit: 3, max_delay: 2d}", (1, 32), "retries.max_delay: '2d' is longer than a day"),
    ("{limit: 3, delay: 86401}", (1, 28), "retries.delay: 86401 is longer than a day"),
])
def test_absurd_retries_are_errors(tmp_path: Path, retries: str, where: tuple[int, int],
                                   message: str) -> None:
    errors, _ = found(tmp_path, f"retries: {retries}\nsteps:\n  - {{id: a, run: 'true'}}\n")
    assert [((p.line, p.column), p.message[:len(message)]) for p in errors] == [
        (where, message)]


def test_a_hundred_retries_a_day_apart_are_allowed(tmp_path: Path) -> None:
    assert found(tmp_path, """
        retries: {limit: 100, delay: 1d, max_delay: 24h}
        steps:
          - {id: a, run: "true", retries: 100}
    """) == ([], [])


@pytest.mark.parametrize(("shell", "message"), [
    ('"  "', "steps[0].shell: names no command"),
    ("'bash -c \"x'", "steps[0].shell: cannot be split into words: No closing quotation"),
])
def test_a_shell_that_names_no_command_is_an_error_where_it_is(tmp_path: Path, shell: str,
                                                               message: str) -> None:
    errors, _ = found(tmp_path, f'steps:\n  - {{id: a, run: "true", shell: {shell}}}\n')
    assert where(errors) == [(2, 33, message)]


# -- uses: job across files ------------------------------------------------------------------


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.d"
    write(jobs / "child.yaml", """
        params:
          who: {type: string, required: true}
          times: {type: integer, default: 1}
        steps:
          - {id: greet, run: "echo hello ${{ params.who }}"}
    """)
    write(jobs / "broken.yaml", "steps: nope\n")
    write(jobs / "parent.yaml", """
        steps:
          - id: fine
            uses: job
            with: {job: child, params: {who: x, times: "3"}}
          - id: typo
            uses: job
            with: {job: chlid}
          - id: params
            uses: job
            with:
              job: child
              params: {whom: x, times: many}
          - id: nothing
            uses: job
            with: {job: child}
          - id: dynamic
            uses: job
            with: {job: "${{ 'child' }}", params: {anything: 1}}
          - id: invalid-callee
            uses: job
            with: {job: broken, params: {anything: 1}}
        finally:
          - {id: again, uses: job, with: {job: parent}}
    """)
    return jobs


def test_calls_to_other_jobs_are_checked_against_the_jobs_directory(calls: Path) -> None:
    loaded = jobset.load_jobs([calls], now=NOW)
    parent = str(calls / "parent.yaml")
    assert "parent" not in loaded.jobs and "child" in loaded.jobs
    assert where(list(loaded.problems[parent])) == [
        (7, 17, "steps[1].with.job: there is no job 'chlid' in the jobs directory (did you "
                "mean 'child'?)"),
        (12, 15, "steps[2].with.params: job 'child' requires 'who'"),
        (12, 16, "steps[2].with.params.whom: job 'child' has no parameter 'whom' (did you "
                 "mean 'who'?) (its parameters: times, who)"),
        (12, 32, "steps[2].with.params.times: parameter 'times' of job 'child': 'many' is "
                 "not an integer"),
        (15, 17, "steps[3].with.job: job 'child' requires 'who'"),
        (23, 40, "finally[0].with.job: job 'parent' cannot start itself"),
    ]


def test_calls_are_checked_in_a_file_that_has_other_errors_too(calls: Path) -> None:
    # Every error at once: the calls need not wait until the rest of the file is right.
    other = write(calls / "other.yaml", """
        steps:
          - {id: a, run: "true", needs: [nope]}
          - id: call
            uses: job
            with: {job: chlid, params: {who: x}}
          - id: params
            uses: job
            with: {job: child, params: {who: x, whom: y}}
        on_failure:
          - {id: self, uses: job, with: {job: other}}
    """)
    loaded = jobset.load_jobs([calls], now=NOW)
    messages = [m for _, _, m in where(list(loaded.problems[str(other)]))]
    assert any(m.startswith("steps[0].needs") and "nope" in m for m in messages), messages
    assert [(line, column, m) for line, column, m in where(list(loaded.problems[str(other)]))
            if ".with." in m] == [
        (5, 17, "steps[1].with.job: there is no job 'chlid' in the jobs directory (did you "
                "mean 'child'?)"),
        (8, 41, "steps[2].with.params.whom: job 'child' has no parameter 'whom' (did you mean "
                "'who'?) (its parameters: times, who)"),
        (10, 39, "on_failure[0].with.job: job 'other' cannot start itself"),
    ]
    # A file the schema refuses is not read for calls: what its steps are is not known.
    write(calls / "other.yaml", "steps: [{id: a, uses: job, with: {job: chlid}}]\nnope: 1\n")
    assert not any("chlid" in p.message
                   for p in jobset.load_jobs([calls], now=NOW).problems[str(other)])


def test_a_single_file_is_not_judged_by_jobs_it_cannot_see(calls: Path) -> None:
    parent = calls / "parent.yaml"
    code, out, _ = cli("validate", str(parent))
    assert code == 1  # what it can see: the call to itself
    assert [line.split(": ", 2)[-1] for line in out.splitlines()] == [
        "finally[0].with.job: job 'parent' cannot start itself"]
    # With its callee beside it, the callee's parameters are judged; names outside are not.
    loaded = jobset.load_jobs([parent, calls / "child.yaml"], now=NOW)
    messages = [p.message for p in loaded.problems[str(parent)]]
    assert any("has no parameter 'whom'" in m for m in messages)
    assert not any("chlid" in m for m in messages)
    code, _, _ = cli("validate", str(calls))
    assert code == 1


def test_the_daemon_catalog_flags_a_call_and_keeps_the_job_running(calls: Path) -> None:
    catalog = Catalog(calls)
    catalog.scan()
    parent = str(calls / "parent.yaml")
    assert "parent" in catalog.jobs and catalog.stale["parent"] == parent
    assert any("there is no job 'chlid'" in p.message for p in catalog.problems[parent])
    assert str(calls / "child.yaml") not in catalog.problems


# -- warnings through every format, and valid everywhere -------------------------------------


@pytest.fixture
def warned(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.d"
    write(jobs / "old.yaml", """
        schedule: {at: "2001-01-01T09:00:00+01:00"}
        steps:
          - {id: a, run: "echo ${{ params.p | default('x') }}"}
    """)
    return jobs


def test_warnings_go_through_every_format_and_exit_0(warned: Path) -> None:
    file = str(warned / "old.yaml")
    code, out, err = cli("validate", str(warned))
    assert code == 0
    assert out.splitlines() == [
        f"{file}:1:16: warning: schedule.at: '2001-01-01T09:00:00+01:00' is in the past: this "
        "schedule never fires",
        f"{file}:3:28: warning: steps[0].run: params.p: there is no parameter 'p' (the job "
        "declares no params); the default (or the `is defined` test) always decides"]
    assert err.strip() == "1 file valid, 2 warnings"
    code, out, _ = cli("validate", "--format", "github", str(warned))
    assert code == 0
    assert [line.split("::")[1] for line in out.splitlines()] == [
        f"warning file={file},line=1,col=16", f"warning file={file},line=3,col=28"]
    code, out, _ = cli("validate", "--format", "json", str(warned))
    answer = json.loads(out)
    assert code == 0 and answer["valid"] is True
    [entry] = answer["files"]
    assert (entry["valid"], entry["errors"]) == (True, [])
    assert [(w["line"], w["column"]) for w in entry["warnings"]] == [(1, 16), (3, 28)]


def test_errors_and_warnings_together_exit_1_in_file_order(warned: Path) -> None:
    write(warned / "old.yaml", """
        schedule: {at: "2001-01-01T09:00:00+01:00"}
        steps:
          - {id: a, run: "echo ${{ params.p }}"}
    """)
    code, out, err = cli("validate", str(warned))
    assert code == 1
    assert [line.split(": ")[1] for line in out.splitlines()] == ["warning", "error"]
    assert err.strip() == "1 file checked, 1 invalid, 1 warning"
    code, out, _ = cli("validate", "--format", "github", str(warned))
    assert [line[:9] for line in out.splitlines()] == ["::warning", "::error f"]


def test_a_file_with_only_warnings_is_valid_for_list_and_the_daemon(warned: Path,
                                                                    tmp_path: Path) -> None:
    code, out, _ = cli("list", "--json", "--jobs-dir", str(warned),
                       "--state-dir", str(tmp_path / "state"))
    assert code == 0
    [row] = json.loads(out)
    assert (row["name"], row["valid"], row["errors"]) == ("old", True, [])
    catalog = Catalog(warned)
    catalog.scan()
    assert set(catalog.jobs) == {"old"} and catalog.problems == {}


def test_a_warning_does_not_stop_a_run(warned: Path, tmp_path: Path) -> None:
    code, _, err = cli("run", "--jobs-dir", str(warned), "--state-dir",
                       str(tmp_path / "state"), "old")
    assert code == 0, err


def test_load_job_raises_errors_only(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", """
        schedule: {at: "2001-01-01T09:00:00+01:00"}
        steps:
          - {id: a, run: "echo ${{ params.p }}"}
    """)
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path)
    assert [p.severity for p in caught.value.problems] == [Severity.ERROR]

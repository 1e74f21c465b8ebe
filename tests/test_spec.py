"""Job files in, frozen jobs or located problems out (pipeline.spec)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import cron, jobset, notation, spec, yamlsafe
from pipeline.errors import JobInvalid, ParamError, Problem
from pipeline.model import (
    Backoff,
    Catchup,
    Job,
    ParamType,
    Policy,
    RetryPolicy,
    ScheduleKind,
    StepKind,
)
from pipeline.params import parse_params
from pipeline.schema import builtin_runner_schemas

CORPUS = Path(__file__).parent / "corpus"
JOBS_D = Path(__file__).parent.parent / "jobs.d"
BAD = sorted((CORPUS / "bad").glob("*.yaml"))
HOSTILE = sorted((CORPUS / "hostile").glob("*.yaml"))
EXPECT = re.compile(r"# expect: (\d+):(\d+) (.+)")
# Hostile files that are valid jobs: their expressions parse, and what they try is the
# expression sandbox's business when they run (pipeline.expr).
MAY_LOAD = {"jinja-escape.yaml"}


def write(tmp_path: Path, text: str | bytes, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, name: str = "job.yaml") -> Job:
    return spec.load_job(write(tmp_path, text, name), display_path=name)


def problems(tmp_path: Path, text: str | bytes, name: str = "job.yaml") -> list[Problem]:
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(write(tmp_path, text, name), display_path=name)
    return list(caught.value.problems)


STEP = 'steps:\n  - {id: a, run: "true"}\n'


# -- the corpus of broken files ----------------------------------------------------------


def test_the_bad_corpus_is_big_enough() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_file_reports_its_first_error_where_it_is(path: Path) -> None:
    expected = EXPECT.match(path.read_text(encoding="utf-8").splitlines()[0])
    assert expected, f"{path.name} must start with '# expect: LINE:COL message'"
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path, display_path=path.name)
    first = caught.value.problems[0]
    assert (first.line, first.column) == (int(expected[1]), int(expected[2])), str(first)
    assert expected[3] in first.message
    assert first.file == path.name
    assert list(caught.value.problems) == sorted(caught.value.problems)


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.name)
def test_hostile_file_gives_located_problems_fast(path: Path) -> None:
    started = time.perf_counter()
    try:
        spec.load_job(path, display_path="hostile.yaml")
    except JobInvalid as exc:
        found = exc.problems
    else:
        assert path.name in MAY_LOAD
        return
    assert time.perf_counter() - started < 2.0
    assert found
    for problem in found:
        assert isinstance(problem, Problem)
        assert problem.file == "hostile.yaml"
        assert problem.line >= 1 and problem.column >= 1
        assert problem.message


def test_an_oversized_file_is_refused_at_line_one(tmp_path: Path) -> None:
    text = STEP + "".join(f"# padding line {i:07d} {'x' * 50}\n" for i in range(34_000))
    assert len(text) > 2 * 1024 * 1024
    started = time.perf_counter()
    found = problems(tmp_path, text)
    assert time.perf_counter() - started < 1.0
    assert [(p.line, p.column) for p in found] == [(1, 1)]
    assert "MiB" in found[0].message


def test_python_tags_are_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system"):
        text = f'steps:\n  - id: a\n    run: {tag} ["touch {marker}"]\n'
        found = problems(tmp_path, text)
        assert "is not allowed" in found[0].message
        assert (found[0].line, found[0].column) == (3, 10)
    assert not marker.exists()


def test_an_unreadable_path_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(tmp_path / "missing.yaml")
    assert caught.value.problems[0].line == 1
    assert "cannot read" in caught.value.problems[0].message


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(fifo)
    assert "not a regular file" in caught.value.problems[0].message
    assert spec.find_job_files(tmp_path) == []


# -- random input --------------------------------------------------------------------------

EXAMPLES = [p.read_text(encoding="utf-8") for p in sorted(JOBS_D.glob("*.yaml"))]
YAML_BITS = st.sampled_from([":", "- ", "  ", "\n", "{", "}", "[", "]", "&a ", "*a", "<<: ",
                             "!!str ", "!!python/name:os.system ", "${{", "}}", "'", '"',
                             "#", "? ", "---\n", "\t", "\x00", "~", "yes", "0o7", ".inf"])


@st.composite
def mutated_jobs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "truncate"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        elif action == "insert":
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            bit = draw(st.one_of(YAML_BITS, st.text(max_size=8)))
            lines[index] = line[:at] + bit + line[at:]
        else:
            lines = lines[:index]
        text = "\n".join(lines)
    return text


def _load_anything(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        job = spec.load_job(path)
    except JobInvalid as exc:
        assert exc.problems
        assert all(p.line >= 1 and p.column >= 1 for p in exc.problems)
    else:
        assert isinstance(job, Job)


# 250 + 250 examples in CI; `bin/bench` sets PIPELINE_FUZZ_EXAMPLES=10000 (20,000 in all).
FUZZ = int(os.environ.get("PIPELINE_FUZZ_EXAMPLES", "250"))


@pytest.mark.slow
@settings(max_examples=FUZZ, deadline=2000,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=400))
def test_random_text_gives_a_job_or_problems(tmp_path: Path, text: str) -> None:
    _load_anything(tmp_path, text)


@pytest.mark.slow
@settings(max_examples=FUZZ, deadline=2000,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_jobs())
def test_mutated_jobs_give_a_job_or_problems(tmp_path: Path, text: str) -> None:
    _load_anything(tmp_path, text)


# -- the example jobs ----------------------------------------------------------------------


def test_example_jobs_are_valid() -> None:
    loaded = jobset.load_jobs([JOBS_D])
    assert dict(loaded.problems) == {}
    assert set(loaded.jobs) == {"backup", "fanout", "report", "flaky-with-alert", "health"}
    for path in JOBS_D.glob("*.yaml"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/job.schema.json"


def test_example_jobs_need_no_network() -> None:
    for job in jobset.load_jobs([JOBS_D]).jobs.values():
        for step in job.all_steps():
            if step.uses in ("http", "wait_for") and "url" in step.with_:
                assert str(step.with_["url"]).startswith("http://127.0.0.1"), (job.name, step.id)


# -- YAML ----------------------------------------------------------------------------------


def test_plain_scalars_follow_yaml_1_2(tmp_path: Path) -> None:
    job = load(tmp_path, """
x-values:
  on: on
  off: off
  yes: yes
  no: no
  y: y
  n: N
  when: 2026-12-01
  stamp: 2026-12-01T09:00:00Z
  octal: 0o17
  leading_zero: 017
  hex: 0x1F
  underscores: 1_000
  float: .5
  exp: 1e3
  plus: +12
  t: True
  f: FALSE
  nothing: ~
  null_word: Null
  empty:
  sexagesimal: 1:30
""" + STEP)
    assert dict(job.document["x-values"]) == {
        "on": "on", "off": "off", "yes": "yes", "no": "no", "y": "y", "n": "N",
        "when": "2026-12-01", "stamp": "2026-12-01T09:00:00Z", "octal": 15,
        "leading_zero": 17, "hex": 31, "underscores": "1_000", "float": 0.5, "exp": 1000.0,
        "plus": 12, "t": True, "f": False, "nothing": None, "null_word": None, "empty": None,
        "sexagesimal": "1:30",
    }


def test_yes_and_no_stay_strings_where_a_string_is_wanted(tmp_path: Path) -> None:
    job = load(tmp_path, """
env: {ANSWER: no, CONFIRM: yes, SWITCH: on}
params:
  mode: off
steps:
  - {id: a, run: "true"}
""")
    assert dict(job.env) == {"ANSWER": "no", "CONFIRM": "yes", "SWITCH": "on"}
    assert job.params["mode"].default == "off"
    assert job.params["mode"].type is ParamType.STRING


def test_explicit_core_tags(tmp_path: Path) -> None:
    job = load(tmp_path, """
x-tags: {a: !!str 12, b: !!int "12", c: !!float 3, d: !!bool true, e: !!null ~, f: "yes"}
""" + STEP)
    assert dict(job.document["x-tags"]) == {"a": "12", "b": 12, "c": 3.0, "d": True,
                                            "e": None, "f": "yes"}


def test_duplicate_keys_are_located_at_the_second(tmp_path: Path) -> None:
    found = problems(tmp_path, """steps:
  - id: a
    run: "true"
    env:
      X: 1
      Y: 2
      X: 3
""")
    assert [(p.line, p.column, p.message) for p in found] == [
        (7, 7, "duplicate key 'X' (first at line 5)")]


def test_merge_keys_and_aliases(tmp_path: Path) -> None:
    job = load(tmp_path, """
x-defaults: &defaults
  timeout: 5m
  retries: 2
  env: {A: "1"}
x-more: &more
  timeout: 1m
  grace: 3s
steps:
  - id: a
    <<: *defaults
    run: "true"
  - id: b
    <<: [*defaults, *more]
    timeout: 30s
    run: "true"
  - id: c
    env: *more
    run: "true"
""")
    a, b, c = job.steps
    assert (a.timeout, a.retries, dict(a.env)) == (300.0, RetryPolicy(limit=2), {"A": "1"})
    assert (b.timeout, b.grace) == (30.0, 3.0)  # written keys win, then earlier merges
    assert dict(c.env) == {"timeout": "1m", "grace": "3s"}


def test_errors_inside_merged_values_point_at_their_source(tmp_path: Path) -> None:
    found = problems(tmp_path, """x-defaults: &defaults
  timeout: soon
steps:
  - id: a
    <<: *defaults
    run: "true"
""")
    assert [(p.line, p.column) for p in found] == [(2, 12)]
    assert found[0].message.startswith("steps[0].timeout: expected a duration")


def test_error_output_format(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  - {id: a, run: x, timeout: 5x}\n  - {id: b}\n")
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path, display_path="jobs.d/x.yaml")
    lines = str(caught.value).splitlines()
    assert lines == [
        "jobs.d/x.yaml:2:30: error: steps[0].timeout: expected a duration such as 30s, 5m, "
        "1h30m, 2d or 250ms, or a number of seconds, got '5x'",
        "jobs.d/x.yaml:3:5: error: steps[1]: needs one of run, exec, uses",
    ]
    assert caught.value.problems[0].as_dict() == {
        "file": "jobs.d/x.yaml", "line": 2, "column": 30,
        "message": lines[0].split(": error: ", 1)[1]}
    assert caught.value.exit_code == 2


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, """name: bad name
schedule: {cron: "0 0 31 2 *", timezone: Mars/Base}
timeout: 0
params:
  n: {type: integer, default: x}
steps:
  - {id: a, run: "echo ${{ }}", needs: [b]}
  - {id: b, run: "true", needs: [a]}
  - {id: b, run: "true", nedds: []}
""")
    lines = [p.line for p in found]
    assert lines == sorted(lines)
    assert len(found) >= 8, "\n".join(map(str, found))
    text = "\n".join(p.message for p in found)
    for part in ("job name", "never fires", "Mars/Base", "longer than 0", "not an integer",
                 "empty", "cycle", "duplicate step id", "nedds"):
        assert part in text


def test_crlf_line_endings_and_a_bom_are_fine(tmp_path: Path) -> None:
    job = spec.load_job(write(tmp_path, "\ufeffname: crlf\r\nsteps:\r\n  - {id: a, run: x}\r\n"))
    assert job.name == "crlf"
    assert job.steps[0].line == 3


@pytest.mark.parametrize("path", [*BAD, *HOSTILE, *sorted(JOBS_D.glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_the_pure_python_fallback_reads_like_libyaml(path: Path) -> None:
    data = path.read_bytes()
    results: list[Any] = []
    for loader in (yamlsafe.LOADER, yamlsafe.PyLoader):
        try:
            document = yamlsafe.parse(data, loader)
        except yamlsafe.Refused:
            results.append("invalid")
        else:
            results.append("invalid" if document.problems else document.data)
    assert results[0] == results[1]


def test_an_empty_file(tmp_path: Path) -> None:
    assert [(p.line, p.column) for p in problems(tmp_path, b"")] == [(1, 1)]


def test_numbers_json_cannot_hold_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "x-big: 1e999\nx-nan: .nan\n" + STEP)
    assert [(p.line, p.column) for p in found] == [(1, 8), (2, 8)]


# -- building the model: every key -----------------------------------------------------------


def test_a_minimal_job(tmp_path: Path) -> None:
    path = write(tmp_path, STEP, "nightly-backup.yaml")
    job = spec.load_job(path)
    assert job.name == "nightly-backup"
    assert job.file == str(path)
    assert job.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (job.description, job.enabled, job.schedules, job.timeout) == ("", True, (), None)
    assert job.concurrency.policy is Policy.FORBID
    assert job.retries == RetryPolicy()
    assert job.circuit_breaker is None
    assert (job.history.keep_runs, job.history.keep_days) == (None, None)
    assert (dict(job.env), dict(job.params), dict(job.secrets)) == ({}, {}, {})
    assert job.on_success == job.on_failure == job.finally_ == ()
    step = job.steps[0]
    assert (step.id, step.kind, step.run, step.line) == ("a", StepKind.RUN, "true", 2)
    assert (step.if_, step.grace, step.retries, step.timeout) == ("success()", 10.0, None, None)
    assert (step.needs, step.exec, step.uses, dict(step.with_)) == ((), (), None, {})
    assert (step.for_each, step.max_parallel, step.shell, step.cwd) == (None, None, None, None)
    assert not step.continue_on_error


def test_the_document_is_kept_frozen(tmp_path: Path) -> None:
    job = load(tmp_path, "description: d\nsteps:\n  - {id: a, exec: [echo, 1], env: {A: b}}\n")
    assert isinstance(job.document, MappingProxyType)
    assert isinstance(job.document["steps"], tuple)
    assert isinstance(job.document["steps"][0], MappingProxyType)
    assert job.document["steps"][0]["exec"] == ("echo", 1)
    with pytest.raises(TypeError):
        job.document["steps"][0]["env"]["A"] = "c"  # type: ignore[index]


def test_top_level_keys(tmp_path: Path) -> None:
    job = load(tmp_path, """
name: nightly.backup_2
description: Dump and compress
enabled: false
timeout: 2h
retries: {limit: 2, delay: 10s, backoff: exponential, max_delay: 5m}
circuit_breaker: {after: 5, cooldown: 1h}
history: {keep_runs: 200, keep_days: 30}
env: {PGHOST: db.internal, PORT: 5432, DEBUG: true, RATIO: 0.5}
x-anything: {goes: here}
steps:
  - {id: a, run: "true"}
""")
    assert (job.name, job.description, job.enabled) == ("nightly.backup_2", "Dump and compress",
                                                         False)
    assert job.timeout == 7200.0
    assert job.retries == RetryPolicy(2, 10.0, Backoff.EXPONENTIAL, 300.0)
    assert (job.circuit_breaker.after, job.circuit_breaker.cooldown) == (5, 3600.0)  # type: ignore[union-attr]
    assert (job.history.keep_runs, job.history.keep_days) == (200, 30.0)
    assert dict(job.env) == {"PGHOST": "db.internal", "PORT": "5432", "DEBUG": "true",
                             "RATIO": "0.5"}


def test_circuit_breaker_cooldown_defaults_to_an_hour(tmp_path: Path) -> None:
    job = load(tmp_path, "circuit_breaker: {after: 3}\n" + STEP)
    assert (job.circuit_breaker.after, job.circuit_breaker.cooldown) == (3, 3600.0)  # type: ignore[union-attr]


def test_history_keep_days_as_a_duration(tmp_path: Path) -> None:
    assert load(tmp_path, "history: {keep_days: 36h}\n" + STEP).history.keep_days == 1.5


@pytest.mark.parametrize(("text", "policy", "active", "queued"), [
    ("forbid", Policy.FORBID, None, 10),
    ("allow", Policy.ALLOW, None, 10),
    ("{policy: allow, max_active: 3}", Policy.ALLOW, 3, 10),
    ("{policy: queue, max_queued: 2}", Policy.QUEUE, None, 2),
    ("replace", Policy.REPLACE, None, 10),
])
def test_concurrency(tmp_path: Path, text: str, policy: Policy, active: int | None,
                     queued: int) -> None:
    concurrency = load(tmp_path, f"concurrency: {text}\n" + STEP).concurrency
    assert (concurrency.policy, concurrency.max_active, concurrency.max_queued) == (
        policy, active, queued)


def test_retries_as_a_number_and_step_retries_override(tmp_path: Path) -> None:
    job = load(tmp_path, """retries: 3
steps:
  - {id: a, run: x}
  - {id: b, run: x, retries: {limit: 1, delay: 2s}}
  - {id: c, run: x, retries: 0}
""")
    assert job.retries == RetryPolicy(limit=3)
    assert [s.retries for s in job.steps] == [None, RetryPolicy(1, 2.0), RetryPolicy(0)]


def test_schedule_string_forms(tmp_path: Path) -> None:
    job = load(tmp_path, """schedule:
  - "30 2 * * *"
  - "@daily"
  - every 15m
  - "@every 90s"
  - "*/10 * * * * *"
""" + STEP)
    local = notation.local_zone()
    kinds = [(s.kind, s.cron, s.every, s.text) for s in job.schedules]
    assert kinds == [
        (ScheduleKind.CRON, cron.parse_cron("30 2 * * *"), None, "30 2 * * *"),
        (ScheduleKind.CRON, cron.parse_cron("@daily"), None, "@daily"),
        (ScheduleKind.EVERY, None, 900.0, "every 15m"),
        (ScheduleKind.EVERY, None, 90.0, "@every 90s"),
        (ScheduleKind.CRON, cron.parse_cron("*/10 * * * * *"), None, "*/10 * * * * *"),
    ]
    for schedule in job.schedules:
        assert schedule.timezone == local
        assert (schedule.catchup, schedule.jitter, schedule.start, schedule.at) == (
            Catchup.LATEST, 0.0, None, None)


def test_schedule_mappings(tmp_path: Path) -> None:
    job = load(tmp_path, """schedule:
  - {cron: "30 2 * * *", timezone: Europe/Berlin, jitter: 30s, catchup: all}
  - {every: 1h, start: "2026-01-01T00:30:00", timezone: UTC, catchup: none}
  - {at: 2026-12-01T09:00:00+01:00}
  - {at: "2026-12-01 09:00", timezone: America/New_York}
""" + STEP)
    cron, every, at, local_at = job.schedules
    assert (cron.kind, cron.timezone, cron.jitter, cron.catchup) == (
        ScheduleKind.CRON, ZoneInfo("Europe/Berlin"), 30.0, Catchup.ALL)
    assert (every.kind, every.every, every.catchup) == (ScheduleKind.EVERY, 3600.0,
                                                        Catchup.NONE)
    assert every.start == datetime(2026, 1, 1, 0, 30, tzinfo=ZoneInfo("UTC"))
    assert at.kind is ScheduleKind.AT
    assert at.at == datetime(2026, 12, 1, 9, tzinfo=timezone(timedelta(hours=1)))
    assert local_at.at == datetime(2026, 12, 1, 9, tzinfo=ZoneInfo("America/New_York"))
    assert local_at.at.utcoffset() == timedelta(hours=-5)  # type: ignore[union-attr]


def test_params(tmp_path: Path) -> None:
    job = load(tmp_path, """params:
  keep_days: {type: integer, default: 14, description: How long}
  target: {type: string, enum: [prod, staging], default: staging}
  title: Weekly report
  top: 5
  ratio: 0.5
  verbose: false
  token: {required: true}
  later:
  count: {default: 3}
  level: {type: number, default: 2}
""" + STEP)
    p = job.params
    assert (p["keep_days"].type, p["keep_days"].default, p["keep_days"].description) == (
        ParamType.INTEGER, 14, "How long")
    assert (p["target"].enum, p["target"].default) == (("prod", "staging"), "staging")
    assert [(p[n].type, p[n].default, p[n].has_default) for n in
            ("title", "top", "ratio", "verbose", "later", "count")] == [
        (ParamType.STRING, "Weekly report", True), (ParamType.INTEGER, 5, True),
        (ParamType.NUMBER, 0.5, True), (ParamType.BOOLEAN, False, True),
        (ParamType.STRING, None, False), (ParamType.INTEGER, 3, True)]
    assert (p["token"].required, p["token"].has_default) == (True, False)
    assert p["level"].default == 2
    assert all(name == param.name for name, param in p.items())


def test_secrets(tmp_path: Path) -> None:
    job = load(tmp_path, """secrets:
  PGPASSWORD: {env: BACKUP_DB_PASSWORD}
  TOKEN: {file: /run/secrets/token}
""" + STEP)
    assert [(s.name, s.env, s.file) for s in job.secrets.values()] == [
        ("PGPASSWORD", "BACKUP_DB_PASSWORD", None), ("TOKEN", None, "/run/secrets/token")]


def test_step_keys(tmp_path: Path) -> None:
    job = load(tmp_path, """params: {file: /tmp/x, go: "no"}
steps:
  - id: dump
    name: Dump the database
    run: pg_dump > /tmp/x
    env: {A: 1}
    cwd: /tmp
    shell: bash -e -c
    timeout: 30m
    grace: 5s
    continue_on_error: true
  - id: compress
    needs: dump
    exec: [gzip, -9, 1.5, "${{ params.file }}"]
    shell: [sh, -c]
  - id: ping
    needs: [dump, compress]
    if: ${{ always() }}
    uses: http
    with: {url: "https://x.invalid", expect_status: [200, 204], headers: {A: b}}
  - id: each
    for_each: [eu, {name: us}]
    max_parallel: 2
    if: "params.go == 'yes'"
    uses: sleep
    with: {duration: 1s}
  - id: dynamic
    needs: [dump]
    for_each: ${{ steps.dump.outputs.list | fromjson }}
    if: false
    run: echo ${{ item }}
""")
    dump, compress, ping, each, dynamic = job.steps
    assert (dump.name, dump.title, dump.kind, dump.run) == (
        "Dump the database", "Dump the database", StepKind.RUN, "pg_dump > /tmp/x")
    assert (dict(dump.env), dump.cwd, dump.shell) == ({"A": "1"}, "/tmp", ("bash", "-e", "-c"))
    assert (dump.timeout, dump.grace, dump.continue_on_error) == (1800.0, 5.0, True)
    assert (compress.needs, compress.kind, compress.title) == (("dump",), StepKind.EXEC,
                                                               "compress")
    assert compress.exec == ("gzip", "-9", "1.5", "${{ params.file }}")
    assert compress.shell == ("sh", "-c")
    assert (ping.needs, ping.kind, ping.uses, ping.if_) == (
        ("dump", "compress"), StepKind.USES, "http", "always()")
    assert dict(ping.with_)["expect_status"] == (200, 204)
    assert isinstance(ping.with_, MappingProxyType)
    assert isinstance(ping.with_["headers"], MappingProxyType)
    assert (each.for_each, each.max_parallel, each.if_) == (
        ("eu", MappingProxyType({"name": "us"})), 2, "params.go == 'yes'")
    assert (dynamic.for_each, dynamic.if_) == ("steps.dump.outputs.list | fromjson", "false")
    assert [s.line for s in job.steps] == [3, 12, 16, 21, 27]


def test_hook_lists(tmp_path: Path) -> None:
    job = load(tmp_path, """steps:
  - {id: a, run: x}
on_success:
  - {id: ok, run: x}
on_failure:
  - {id: alert, run: x}
  - {id: page, run: x, needs: [alert]}
finally:
  - {id: cleanup, run: x}
""")
    assert [s.id for s in job.on_success] == ["ok"]
    assert [s.id for s in job.on_failure] == ["alert", "page"]
    assert [s.id for s in job.finally_] == ["cleanup"]
    assert [s.id for s in job.all_steps()] == ["a", "ok", "alert", "page", "cleanup"]


def test_third_party_runner_schemas(tmp_path: Path) -> None:
    runners: dict[str, dict[str, Any]] = {
        **builtin_runner_schemas(),
        "echo": {"type": "object", "additionalProperties": False, "required": ["text"],
                 "properties": {"text": {"type": "string", "description": "What to say."}}},
    }
    path = write(tmp_path, "steps:\n  - {id: a, uses: echo, with: {text: hi}}\n")
    assert spec.load_job(path, runner_schemas=runners).steps[0].with_["text"] == "hi"
    path = write(tmp_path, "steps:\n  - {id: a, uses: echo, with: {text: 5}}\n")
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path, runner_schemas=runners)
    assert caught.value.problems[0].message == "steps[0].with.text: expected a string, got 5"
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path)  # the built-ins alone do not know it
    assert "unknown runner 'echo'" in caught.value.problems[0].message


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0), ("250ms", 0.25),
    ("1w", 604800.0), ("1.5h", 5400.0), ("1m30s500ms", 90.5), (" 10s ", 10.0), ("45", 45.0),
    ("2.5", 2.5), (0, 0.0), (90, 90.0), (0.5, 0.5),
])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert notation.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 m", "m", "1h-30m", "5x", "-5s", "1e3s", "soon",
                                  -1, float("nan"), float("inf"), True, None, [], "1000000d",
                                  10**400])
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        notation.parse_duration(text)


# -- finding and loading many files --------------------------------------------------------


def test_find_job_files(tmp_path: Path) -> None:
    for name in ["b.yaml", "a.yml", "sub/c.yaml", "sub/deeper/d.yml", ".hidden.yaml",
                 ".git/e.yaml", "sub/.cache/f.yaml", "g.yaml~", ".g.yaml.swp", "h.yaml.swp",
                 "i.yaml.tmp", "#j.yaml#", "k.json", "notes.txt", "l.YAML"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(STEP)
    found = spec.find_job_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.yml", "b.yaml", "sub/c.yaml", "sub/deeper/d.yml"]
    assert spec.find_job_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    assert spec.find_job_files(tmp_path / "missing") == []


def test_load_jobs_reports_duplicate_names_on_later_files(tmp_path: Path) -> None:
    write(tmp_path, STEP, "backup.yaml")
    write(tmp_path, "description: x\nname: backup\n" + STEP, "b-copy.yaml")
    write(tmp_path, "name: other\n" + STEP, "c.yaml")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", STEP, "backup.yml")
    write(tmp_path, "name: broken\nsteps: []\n", "d.yaml")
    loaded = jobset.load_jobs([tmp_path])
    assert set(loaded.jobs) == {"backup", "other"}
    assert loaded.jobs["backup"].file == str(tmp_path / "b-copy.yaml")  # sorted: b- < backup
    first_file = str(tmp_path / "b-copy.yaml")
    assert {Path(f).name: [(p.line, p.column, p.message) for p in found]
            for f, found in loaded.problems.items()} == {
        "backup.yaml": [(1, 1, f"the job name 'backup' is already used by {first_file}, "
                               "the first file in path order")],
        "backup.yml": [(1, 1, f"the job name 'backup' is already used by {first_file}, "
                              "the first file in path order")],
        "d.yaml": [(2, 8, "steps: must not be empty")],
    }
    assert {Path(f).name: name for f, name in loaded.files.items()} == {
        "b-copy.yaml": "backup", "backup.yaml": "backup", "c.yaml": "other",
        "d.yaml": "broken", "backup.yml": "backup"}


def test_load_jobs_locates_a_duplicate_name_at_its_key(tmp_path: Path) -> None:
    write(tmp_path, "name: same\n" + STEP, "a.yaml")
    write(tmp_path, "description: x\nname: same\n" + STEP, "b.yaml")
    loaded = jobset.load_jobs([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    (problem,) = loaded.problems[str(tmp_path / "b.yaml")]
    assert (problem.line, problem.column) == (2, 7)


def test_load_jobs_with_what_the_state_remembers_keeps_a_name_for_its_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.model import Definition

    def remembered(path: Path, text: str) -> Definition:
        return Definition(path.name, spec.load_job(path).name,
                          hashlib.sha256(text.encode()).hexdigest(), text.encode(),
                          datetime(2026, 1, 1, tzinfo=UTC))

    held = write(tmp_path, "name: same\n" + STEP, "b-held.yaml")
    newcomer = write(tmp_path, "name: same\n" + STEP, "a-new.yaml")  # first in path order
    broken = write(tmp_path, "schedule: every 1h\n" + STEP, "c.yaml")
    state = {"b-held.yaml": remembered(held, "name: same\n" + STEP),
             "c.yaml": remembered(broken, "schedule: every 1h\n" + STEP)}
    broken.write_text("steps: [oops\n")  # no longer parses; its last good version holds "c"
    late = write(tmp_path, "name: c\n" + STEP, "d.yaml")
    # Named the way a daemon names them (relative to the jobs directory given)...
    loaded = jobset.load_jobs([tmp_path], remembered=jobset.remembered_files(tmp_path, state))
    assert loaded.jobs["same"].file == str(held) and "c" not in loaded.jobs
    assert {f: [p.message for p in found] for f, found in loaded.problems.items()} == {
        str(newcomer): [f"the job name 'same' is already used by {held}, which held it first"],
        str(broken): [loaded.problems[str(broken)][0].message],
        str(late): [f"the job name 'c' is already used by {broken}, which held it first"]}
    assert loaded.files[str(broken)] == "c"
    assert loaded.kept["c"].file == str(broken) and loaded.kept["c"].schedules
    # ... or spelled another way: the same files.
    monkeypatch.chdir(tmp_path)
    again = jobset.load_jobs([Path(".")], remembered=jobset.remembered_files(tmp_path, state))
    assert again.jobs["same"].file == "b-held.yaml" and set(again.kept) == {"c"}
    # Without a state, path order: the newcomer wins, and the broken file holds nothing.
    fresh = jobset.load_jobs([tmp_path])
    assert fresh.jobs["same"].file == str(newcomer) and fresh.jobs["c"].file == str(late)
    assert fresh.kept == {}


def test_load_jobs_of_files_and_missing_paths(tmp_path: Path) -> None:
    good = write(tmp_path, STEP, "good.yaml")
    loaded = jobset.load_jobs([good, tmp_path / "nope.yaml", good])
    assert list(loaded.jobs) == ["good"]
    assert list(loaded.problems) == [str(tmp_path / "nope.yaml")]


# -- parameters ----------------------------------------------------------------------------

PARAMS = """params:
  n: {type: integer, default: 3}
  ratio: {type: number}
  flag: {type: boolean, default: false}
  env: {type: string, enum: [prod, staging], default: staging}
  level: {type: integer, enum: [1, 2, 3]}
  who: {required: true}
  note: {}
""" + STEP


@pytest.mark.parametrize(("given", "expected"), [
    ({"who": "me"}, {"n": 3, "ratio": None, "flag": False, "env": "staging", "level": None,
                     "who": "me", "note": None}),
    ({"who": "x", "n": "42", "ratio": "2.5", "flag": "yes", "env": "prod", "level": "2",
      "note": "a b; rm -rf /"},
     {"n": 42, "ratio": 2.5, "flag": True, "env": "prod", "level": 2, "who": "x",
      "note": "a b; rm -rf /"}),
    ({"who": "x", "flag": "0", "ratio": "7"}, {"flag": False, "ratio": 7}),
    ({"who": "x", "flag": "TRUE", "n": " -4 "}, {"flag": True, "n": -4}),
    ({"who": "x", "n": 5, "ratio": 1, "flag": True, "level": 3.0},
     {"n": 5, "ratio": 1, "flag": True, "level": 3}),
])
def test_parse_params(tmp_path: Path, given: dict[str, Any], expected: dict[str, Any]) -> None:
    values = parse_params(load(tmp_path, PARAMS), given)
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize(("given", "message"), [
    ({}, "parameter 'who' is required"),
    ({"who": "x", "nn": "1"}, "unknown parameter 'nn' (did you mean 'n'?)"),
    ({"who": "x", "n": "1.5"}, "parameter 'n': '1.5' is not an integer"),
    ({"who": "x", "ratio": "lots"}, "parameter 'ratio': 'lots' is not a number"),
    ({"who": "x", "ratio": "nan"}, "parameter 'ratio': 'nan' is not a number"),
    ({"who": "x", "flag": "maybe"}, "parameter 'flag': 'maybe' is not a boolean"),
    ({"who": "x", "env": "dev"}, "parameter 'env': 'dev' is not one of 'prod', 'staging'"),
    ({"who": "x", "level": "4"}, "parameter 'level': 4 is not one of 1, 2, 3"),
    ({"who": "x", "n": True}, "parameter 'n': true is not an integer"),
    ({"who": "x", "flag": 1}, "parameter 'flag': 1 is not true or false"),
    ({"who": 5}, "parameter 'who': 5 is not a string"),
])
def test_parse_params_refuses(tmp_path: Path, given: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError, match=re.escape(message)) as caught:
        parse_params(load(tmp_path, PARAMS), given)
    assert caught.value.exit_code == 2


def test_parse_params_names_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ParamError) as caught:
        parse_params(load(tmp_path, PARAMS), {"n": "x", "zzz": "1"})
    assert len(str(caught.value).split("; ")) == 3


def test_parse_params_without_declarations(tmp_path: Path) -> None:
    job = load(tmp_path, STEP)
    assert parse_params(job, {}) == {}
    with pytest.raises(ParamError, match="parameters of job: none"):
        parse_params(job, {"a": "1"})


# -- what other modules rely on ------------------------------------------------------------


def test_unwrap() -> None:
    assert notation.unwrap("${{ always() }}") == "always()"
    assert notation.unwrap("  success() ") == "success()"
    assert notation.unwrap("${{ {'a': 1} }}") == "{'a': 1}"
    with pytest.raises(ValueError):
        notation.unwrap("${{ a }} and ${{ b }}")


def test_keys_and_short_words_of_job_files_are_one_object_each() -> None:
    """A thousand files repeat the same keys and words; each is kept once (sys.intern), which
    is 5–6 MiB of the daemon's RSS with 1,000 jobs loaded."""
    first = yamlsafe.parse(b"steps:\n  - {id: build, run: make}\n").data
    second = yamlsafe.parse(b"steps:\n  - {id: build, run: make}\n").data
    [(key_1, steps_1)] = first.items()
    [(key_2, steps_2)] = second.items()
    assert key_1 is key_2
    assert steps_1[0]["id"] is steps_2[0]["id"] and steps_1[0]["run"] is steps_2[0]["run"]
    long = "x" * 60
    again = yamlsafe.parse(f"a: {long}\n".encode()).data["a"]
    assert again == long and yamlsafe.parse(f"a: {long}\n".encode()).data["a"] is not again

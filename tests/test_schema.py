"""The JSON Schemas: committed files, composition, and agreement of the two validators.

The committed ``schemas/job.schema.json`` embeds the runner schemas; when a runner schema
changes, regenerate it with ``python tests/test_schema.py`` (run from the checkout).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from jsonschema import Draft202012Validator

from pipeline import spec, yamlsafe
from pipeline.build import job_from_record
from pipeline.errors import JobInvalid
from pipeline.model import (
    CircuitBreaker,
    Concurrency,
    Job,
    Param,
    RetryPolicy,
    Schedule,
    Smtp,
    Step,
)
from pipeline.notation import AT_PATTERN, DURATION_PATTERN, EXPRESSION_PATTERN, parse_duration
from pipeline.schema import builtin_runner_schemas, job_schema, schema_dir

ROOT = Path(__file__).parent.parent
SCHEMAS = ROOT / "schemas"
CORPUS = Path(__file__).parent / "corpus"
BUILTINS = {"http", "python", "sleep", "wait_for", "job"}


def committed() -> dict[str, Any]:
    return json.loads((SCHEMAS / "job.schema.json").read_text(encoding="utf-8"))


def runner_files() -> dict[str, dict[str, Any]]:
    return {p.name.removesuffix(".schema.json"): json.loads(p.read_text(encoding="utf-8"))
            for p in (SCHEMAS / "runners").glob("*.schema.json")}


def yaml_data(path: Path) -> Any:
    """What our loader builds from a file, or None if it does not get that far."""
    try:
        return yamlsafe.parse(path.read_bytes()).data
    except yamlsafe.Refused:
        return None


def plain_validator() -> Draft202012Validator:
    """A validator with nothing but the committed file: what an editor or CI tool has."""
    return Draft202012Validator(committed())


# -- the committed files -------------------------------------------------------------------


def test_the_committed_job_schema_is_what_job_schema_makes() -> None:
    assert committed() == job_schema(), "regenerate: python tests/test_schema.py"


def test_the_embedded_runner_schemas_equal_their_files() -> None:
    defs = committed()["$defs"]
    files = runner_files()
    assert set(files) == BUILTINS
    assert {k.removeprefix("runner-") for k in defs if k.startswith("runner-")} == BUILTINS
    for name, schema in files.items():
        assert defs[f"runner-{name}"] == schema, name


def test_the_schemas_are_valid_draft_2020_12() -> None:
    for schema in [committed(), *runner_files().values()]:
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].startswith("https://")
        assert schema["title"] and schema["description"]
        Draft202012Validator.check_schema(schema)


def _objects(schema: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        yield where, schema
        for key, value in schema.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _objects(value, f"{where}/{index}")


def test_every_property_has_a_description() -> None:
    # `if` subschemas only select a branch (uses: http); they document nothing.
    missing = [f"{where}/properties/{name}"
               for where, schema in _objects(committed())
               if isinstance(schema.get("properties"), dict) and not where.endswith("/if")
               for name, prop in schema["properties"].items()
               if isinstance(prop, dict) and "description" not in prop]
    assert missing == []


def test_every_object_with_properties_refuses_other_keys() -> None:
    open_objects = [where for where, schema in _objects(committed())
                    if "properties" in schema and isinstance(schema["properties"], dict)
                    and "properties" not in where.rsplit("/", 1)[-1]
                    and schema.get("additionalProperties") is not False
                    and not where.endswith(("/if", "/then"))
                    # a oneOf branch that only picks a key: `{required: [k], properties:
                    # {k: true}}` (the `true` is for ajv's strictRequired)
                    and not all(v is True for v in schema["properties"].values())]
    assert open_objects == []


def test_the_main_properties_have_examples() -> None:
    schema = committed()
    props = schema["properties"]
    for name in ("name", "schedule", "concurrency", "timeout", "params", "secrets", "env"):
        target = props[name]
        if "$ref" in target and "examples" not in target:
            target = schema["$defs"][target["$ref"].rsplit("/", 1)[-1]]
        assert target.get("examples"), name
    step = schema["$defs"]["step"]["properties"]
    for name in ("id", "run", "exec", "uses", "needs", "if", "for_each"):
        assert step[name].get("examples"), name


def test_the_duration_pattern_is_the_one_parse_duration_reads() -> None:
    defs = committed()["$defs"]
    assert defs["duration"]["anyOf"][0]["pattern"] == DURATION_PATTERN
    assert defs["expression"]["pattern"] == EXPRESSION_PATTERN
    assert defs["schedule_map"]["properties"]["at"]["pattern"] == AT_PATTERN
    for schema in runner_files().values():
        assert schema["$defs"]["duration"] == defs["duration"]
        assert schema["$defs"]["expression"] == defs["expression"]


def test_the_defaults_the_schemas_show_are_the_models() -> None:
    """A key a job leaves out gets the model's default (spec, schedules and settings read
    them from the model); the schemas' `default` annotations, which editors show, say the
    same."""
    job = committed()
    props, defs = job["properties"], job["$defs"]
    schedule = defs["schedule_map"]["properties"]
    assert props["enabled"]["default"] is Job.enabled
    assert (props["on_node_loss"]["default"] == "retry") is Job.on_node_loss_retry
    assert defs["policy"]["default"] == Concurrency.policy
    assert schedule["catchup"]["default"] == Schedule.catchup
    assert parse_duration(schedule["misfire_grace"]["default"]) == Schedule.misfire_grace
    assert parse_duration(schedule["settle"]["default"]) == Schedule.settle
    assert schedule["existing"]["default"] is Schedule.existing
    assert tuple(schedule["status"]["default"]) == Schedule.status
    assert defs["retries"]["anyOf"][1]["properties"]["backoff"]["default"] == RetryPolicy.backoff
    assert defs["param"]["anyOf"][0]["properties"]["required"]["default"] is Param.required
    assert defs["step"]["properties"]["continue_on_error"]["default"] is Step.continue_on_error
    settings = json.loads((SCHEMAS / "settings.schema.json").read_text(encoding="utf-8"))
    assert settings["properties"]["smtp"]["properties"]["starttls"]["default"] is Smtp.starttls
    assert settings["$defs"]["retries"]["anyOf"][1]["properties"]["backoff"]["default"] == (
        RetryPolicy.backoff)
    # And a job that sets nothing gets them.
    bare = job_from_record({"steps": [{"id": "a", "run": "true"}],
                                 "schedule": {"cron": "* * * * *"},
                                 "circuit_breaker": {"after": 3}},
                                name="bare", file="bare.yaml", sha256="0" * 64)
    assert (bare.enabled, bare.concurrency, bare.steps[0].grace, bare.steps[0].if_) == (
        Job.enabled, Concurrency(), Step.grace, Step.if_)
    assert bare.schedules[0].misfire_grace == Schedule.misfire_grace
    assert bare.circuit_breaker == CircuitBreaker(3, CircuitBreaker.cooldown) == CircuitBreaker(3)


def test_schema_dir_and_builtin_runner_schemas() -> None:
    assert (schema_dir() / "job.schema.json").is_file()
    first = builtin_runner_schemas()
    assert set(first) == BUILTINS
    first["http"]["title"] = "changed"
    assert builtin_runner_schemas()["http"]["title"] != "changed"


# -- the two validators agree --------------------------------------------------------------


def corpus_documents() -> list[tuple[str, Any]]:
    found = []
    for path in sorted([*CORPUS.glob("*/*.yaml"), *(ROOT / "jobs.d").glob("*.yaml")]):
        data = yaml_data(path)
        if data is not None:
            found.append((path.name, data))
    return found


def test_jsonschema_rs_and_python_jsonschema_agree_on_the_corpus(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "bench"))
    try:
        from gen_jobs import write_jobs
    finally:
        sys.path.pop(0)
    schema = job_schema()
    fast = jsonschema_rs.validator_for(schema)
    slow = Draft202012Validator(schema)
    documents = corpus_documents()
    documents += [(p.name, yaml_data(p)) for p in write_jobs(tmp_path, 50)]
    verdicts = {name: (fast.is_valid(data), slow.is_valid(data)) for name, data in documents}
    assert len(verdicts) > 100
    assert {name: v for name, v in verdicts.items() if v[0] != v[1]} == {}
    assert any(valid for valid, _ in verdicts.values())
    assert not all(valid for valid, _ in verdicts.values())


# -- standing alone ------------------------------------------------------------------------


def test_a_plain_validator_accepts_the_example_jobs() -> None:
    validator = plain_validator()
    for path in sorted((ROOT / "jobs.d").glob("*.yaml")):
        for data in (yaml.safe_load(path.read_text(encoding="utf-8")), yaml_data(path)):
            errors = [e.message for e in validator.iter_errors(data)]
            assert errors == [], path.name


@pytest.mark.parametrize("document", [
    {"steps": []},
    {"stpes": [{"id": "a", "run": "x"}]},
    {"steps": [{"id": "a"}]},
    {"steps": [{"id": "a", "run": "x", "exec": ["x"]}]},
    {"steps": [{"id": "1a", "run": "x"}]},
    {"steps": [{"id": "a", "run": "x", "timeout": "5x"}]},
    {"steps": [{"id": "a", "run": "x", "with": {}}]},
    {"steps": [{"id": "a", "uses": "htp"}]},
    {"steps": [{"id": "a", "uses": "sleep"}]},
    {"steps": [{"id": "a", "uses": "sleep", "with": {"duration": "soon"}}]},
    {"steps": [{"id": "a", "uses": "http", "with": {"url": "u", "json": 1, "body": "b"}}]},
    {"steps": [{"id": "a", "uses": "http", "with": {"url": "u", "expect_status": 99}}]},
    {"steps": [{"id": "a", "uses": "wait_for", "with": {}}]},
    {"steps": [{"id": "a", "uses": "python", "with": {"callable": "no_colon"}}]},
    {"steps": [{"id": "a", "uses": "job", "with": {"job": "../x"}}]},
    {"name": "../etc", "steps": [{"id": "a", "run": "x"}]},
    {"schedule": {"cron": "* * * * *", "every": "5m"}, "steps": [{"id": "a", "run": "x"}]},
    {"schedule": {"at": "tomorrow"}, "steps": [{"id": "a", "run": "x"}]},
    {"concurrency": "sometimes", "steps": [{"id": "a", "run": "x"}]},
    {"enabled": "no", "steps": [{"id": "a", "run": "x"}]},
    {"on": "push", "steps": [{"id": "a", "run": "x"}]},
    {"secrets": {"A": {"env": "X", "file": "/y"}}, "steps": [{"id": "a", "run": "x"}]},
    {"env": {"A-B": "x"}, "steps": [{"id": "a", "run": "x"}]},
    {"params": {"a": {"type": "int"}}, "steps": [{"id": "a", "run": "x"}]},
])
def test_a_plain_validator_rejects_what_a_schema_can_express(document: dict[str, Any]) -> None:
    assert not plain_validator().is_valid(document)


@pytest.mark.parametrize(("runner", "arguments"), [
    ("http", {"url": "${{ params.url }}", "method": "${{ params.method }}",
              "timeout": "${{ params.t }}", "expect_status": "${{ params.codes }}",
              "follow_redirects": "${{ params.follow }}", "json": {"a": "${{ item }}"}}),
    ("http", {"url": "https://x.invalid", "method": "PATCH", "timeout": 2.5,
              "expect_status": [200, 204], "follow_redirects": False,
              "headers": {"X-Token": "t"}, "proxy": "http://proxy:3128", "body": "b"}),
    ("python", {"callable": "pkg.mod:func", "args": [1, "a"], "kwargs": {"a": 1}}),
    ("python", {"callable": "pkg.mod:Class.method", "args": "${{ params.args }}"}),
    ("sleep", {"duration": "${{ params.pause }}"}),
    ("sleep", {"duration": 1.5}),
    ("wait_for", {"path": "/tmp/x", "timeout": "5m", "interval": "1s", "stable_for": "2s"}),
    ("wait_for", {"url": "http://localhost/health", "timeout": "${{ params.t }}"}),
    ("job", {"job": "nightly-backup", "params": {"a": 1}, "wait": False}),
    ("job", {"job": "${{ params.child }}", "wait": "${{ params.wait }}"}),
])
def test_runner_arguments_may_be_expressions(runner: str, arguments: dict[str, Any]) -> None:
    document = {"steps": [{"id": "a", "uses": runner, "with": arguments}]}
    assert [e.message for e in plain_validator().iter_errors(document)] == []


# -- composing third-party runners ---------------------------------------------------------

ECHO = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False, "required": ["text"],
    "properties": {"text": {"$ref": "#/$defs/words", "description": "What to say."}},
    "$defs": {"words": {"type": "string", "minLength": 1}},
}


def test_job_schema_composes_third_party_runners(tmp_path: Path) -> None:
    runners = {**builtin_runner_schemas(), "my.echo": ECHO}
    schema = job_schema(runners)
    Draft202012Validator.check_schema(schema)
    assert schema["$defs"]["step"]["properties"]["uses"]["enum"] == sorted(runners)
    assert schema["$defs"]["runner-my.echo"]["$id"] == "urn:pipeline:runner:my.echo"
    validator = Draft202012Validator(schema)
    good = {"steps": [{"id": "a", "uses": "my.echo", "with": {"text": "hi"}}]}
    bad = {"steps": [{"id": "a", "uses": "my.echo", "with": {"text": ""}}]}
    assert validator.is_valid(good) and jsonschema_rs.validator_for(schema).is_valid(good)
    assert not validator.is_valid(bad) and not jsonschema_rs.validator_for(schema).is_valid(bad)
    path = tmp_path / "echo.yaml"
    path.write_text("steps:\n  - {id: a, uses: my.echo, with: {text: ''}}\n")
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path, runner_schemas=runners)
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, 41)]


def test_a_runner_without_required_arguments_needs_no_with(tmp_path: Path) -> None:
    runners = {"noop": {"type": "object", "additionalProperties": False, "properties": {}}}
    path = tmp_path / "noop.yaml"
    path.write_text("steps:\n  - {id: a, uses: noop}\n")
    assert spec.load_job(path, runner_schemas=runners).steps[0].uses == "noop"


def regenerate() -> None:
    """Write schemas/job.schema.json from itself and schemas/runners/*.schema.json."""
    text = json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"
    (SCHEMAS / "job.schema.json").write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMAS / 'job.schema.json'}")


if __name__ == "__main__":
    regenerate()

"""The settings file (pipeline.settings): its schema and located errors, how load_jobs treats
it, the defaults every job gets, and pools and email targets judged against it."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from pipeline import jobset, spec
from pipeline import settings as settings_module
from pipeline.build import job_from_record
from pipeline.cli import main
from pipeline.errors import JobInvalid, SettingsInvalid
from pipeline.model import (
    Backoff,
    NotifyEvent,
    Pool,
    Secret,
    Settings,
    TargetKind,
)
from pipeline.settings import apply_defaults, is_settings_file, load_settings
from pipeline.watch import Catalog

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = """\
kind: settings
pools: {db: 2, gpu: 1}
max_active_runs: 50
defaults:
  timezone: Europe/Berlin
  timeout: 6h
  retries: {limit: 2, delay: 10s, backoff: exponential}
  history: {keep_runs: 20}
  max_parallel: 4
  notify:
    - when: [failure, recovery]
      webhook: {url: "${{ secrets.HOOK_URL }}", headers: {X-Team: ops}}
    - email: {to: [ops@example.com]}
smtp: {host: smtp.internal, port: 587, starttls: true, from: pipeline@example.com,
       username: pipeline, password: {env: SMTP_PASSWORD}}
secrets:
  HOOK_URL: {env: PIPELINE_HOOK_URL}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path) -> list[tuple[int, int, str]]:
    with pytest.raises(SettingsInvalid) as caught:
        load_settings(path, display_path=path.name)
    assert all(p.file == path.name for p in caught.value.problems)
    return [(p.line, p.column, p.message) for p in caught.value.problems]


# -- the file on its own ---------------------------------------------------------------------


def test_a_settings_file_loads_into_frozen_settings(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path / "settings.yaml", SETTINGS))
    assert dict(loaded.pools) == {"db": 2, "gpu": 1}
    assert loaded.max_active_runs == 50
    defaults = loaded.defaults
    assert defaults.timezone == ZoneInfo("Europe/Berlin")
    assert defaults.timeout == 6 * 3600
    assert defaults.retries is not None and defaults.retries.limit == 2
    assert defaults.retries.backoff is Backoff.EXPONENTIAL
    assert defaults.history is not None and defaults.history.keep_runs == 20
    assert defaults.max_parallel == 4
    assert defaults.notify is not None
    hook, mail = defaults.notify
    assert hook.kind is TargetKind.WEBHOOK and hook.url == "${{ secrets.HOOK_URL }}"
    assert hook.when == {NotifyEvent.FAILURE, NotifyEvent.RECOVERY}
    assert dict(hook.headers) == {"X-Team": "ops"} and hook.label == "notify[0] webhook"
    assert mail.kind is TargetKind.EMAIL and mail.to == ("ops@example.com",)
    assert mail.when == {NotifyEvent.FAILURE}  # the default when
    assert loaded.smtp is not None
    assert (loaded.smtp.host, loaded.smtp.port, loaded.smtp.starttls, loaded.smtp.sender) == (
        "smtp.internal", 587, True, "pipeline@example.com")
    assert loaded.smtp.password == Secret("smtp.password", "SMTP_PASSWORD", None)
    assert loaded.secrets["HOOK_URL"].env == "PIPELINE_HOOK_URL"
    with pytest.raises(TypeError):
        loaded.pools["db"] = 3  # type: ignore[index]


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: settings\npools: {db: 0}\n", (2, 13, "pools.db: must be at least 1, got 0")),
    ("kind: settings\npool: {db: 1}\n", (2, 1, "unknown key 'pool' (did you mean 'pools'?)")),
    ("kind: settings\ndefaults: {timezone: Europe/Berlim}\n",
     (2, 22, "defaults.timezone: unknown time zone")),
    ("kind: settings\ndefaults:\n  timeout: soon\n",
     (3, 12, "defaults.timeout: expected a duration")),
    ("kind: settings\nmax_active_runs: many\n",
     (2, 18, "max_active_runs: expected an integer, got 'many'")),
    ("kind: settings\ndefaults:\n  notify:\n    - webhook: {url: '${{ secrets.NOPE }}'}\n",
     (4, 27, "there is no secret 'NOPE' (the settings file declares no secrets)")),
    ("kind: settings\ndefaults:\n  notify:\n    - webhook: {url: '${{ steps.a.status }}'}\n",
     (4, 27, "steps is not there when a notification is sent")),
    ("kind: settings\ndefaults:\n  notify:\n    - email: {to: [a@b.c]}\n",
     (4, 14, "email needs an SMTP server")),
    ("kind: settings\ndefaults:\n  notify:\n    - {ping: 'https://hc/x', cooldown: 5x}\n",
     (4, 40, "expected a duration")),
    ("kind: settings\nsmtp: {host: h, from: a@b.c, password: {env: X}}\n",
     (2, 30, "'password' only applies together with 'username'")),
    ("kind: settings\ndefaults:\n  notify:\n    - {ping: 'https://hc/x', command: [x]}\n",
     (4, 30, "takes only one of webhook, slack, email, ping, command")),
    ("kind: settings\npools: {db: 1}\npools: {db: 2}\n", (3, 1, "duplicate key")),
])
def test_a_bad_settings_file_says_where(tmp_path: Path, text: str,
                                        expected: tuple[int, int, str]) -> None:
    found = errors_of(write(tmp_path / "settings.yaml", text))
    line, column, words = expected
    assert any((at, c) == (line, column) and words in m for at, c, m in found), found


def test_a_settings_file_that_is_not_yaml_is_refused_where_it_breaks(tmp_path: Path) -> None:
    found = errors_of(write(tmp_path / "settings.yaml", "kind: settings\npools: {db: 2\n"))
    assert found[0][:2] == (3, 1) and "invalid YAML" in found[0][2]


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: settings\n", True),
    ("# settings\nkind: 'settings'   # this one\npools: {db: 1}\n", True),
    ("{kind: settings, pools: {db: 1}}\n", True),
    ("pools: {db: 1}\nkind: settings\n", True),
    ("kind: settings\npools: {db: 2\n", True),  # broken YAML: still the settings file
    ("steps:\n  - {id: a, run: 'echo kind: settings'}\n", False),
    ("description: |\n  kind: settings\nsteps: [{id: a, run: 'true'}]\n", False),
    ("kind: job\nsteps: [{id: a, run: 'true'}]\n", False),
    ("steps: [{id: a, run: 'true'}]\n", False),
])
def test_is_settings_file_reads_the_top_level_kind(tmp_path: Path, text: str,
                                                   expected: bool) -> None:
    path = write(tmp_path / "x.yaml", text)
    assert is_settings_file(path) is expected
    assert is_settings_file(path, path.read_bytes()) is expected


def test_is_settings_file_is_false_for_what_cannot_be_read(tmp_path: Path) -> None:
    assert not is_settings_file(tmp_path / "missing.yaml")
    assert not is_settings_file(tmp_path)


# -- the schema --------------------------------------------------------------------------------


def test_the_settings_schema_is_draft_2020_12_and_shares_the_job_schemas_parts() -> None:
    schema = json.loads((ROOT / "schemas" / "settings.schema.json").read_text())
    job = json.loads((ROOT / "schemas" / "job.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema == settings_module.settings_schema()
    for name in ("duration", "expression", "url", "retries", "notify_event", "notify_target",
                 "notify"):
        assert schema["$defs"][name] == job["$defs"][name], name
    assert schema["$defs"]["secret"] == job["properties"]["secrets"]["additionalProperties"]
    history = {k: v for k, v in job["properties"]["history"].items() if k != "examples"}
    assert schema["$defs"]["history"] == history


def test_every_settings_property_is_described_and_closed() -> None:
    from tests.test_schema import _objects

    schema = settings_module.settings_schema()
    undescribed = [f"{where}/properties/{name}" for where, part in _objects(schema)
                   if isinstance(part.get("properties"), dict)
                   for name, prop in part["properties"].items()
                   if isinstance(prop, dict) and "description" not in prop]
    open_objects = [where for where, part in _objects(schema)
                    if isinstance(part.get("properties"), dict)
                    and where.rsplit("/", 1)[-1] != "properties"
                    and part.get("additionalProperties") is not False
                    and not all(v is True for v in part["properties"].values())]
    assert (undescribed, open_objects) == ([], [])


# -- in a jobs directory ---------------------------------------------------------------------


JOB = """\
schedule: "30 2 * * *"
steps:
  - {id: a, run: "true"}
"""


def test_load_jobs_validates_the_settings_file_as_settings_not_as_a_job(
        tmp_path: Path) -> None:
    write(tmp_path / "settings.yaml", SETTINGS)
    write(tmp_path / "a.yaml", JOB)
    loaded = jobset.load_jobs([tmp_path])
    assert loaded.problems == {}
    assert set(loaded.jobs) == {"a"}
    assert loaded.settings is not None and loaded.settings.file == str(tmp_path / "settings.yaml")
    assert loaded.settings_files == (str(tmp_path / "settings.yaml"),)


def test_a_second_settings_file_is_an_error_at_its_kind(tmp_path: Path) -> None:
    write(tmp_path / "a-settings.yaml", "kind: settings\npools: {db: 1}\n")
    write(tmp_path / "b-settings.yaml", "# more\nkind: settings\n")
    write(tmp_path / "job.yaml", JOB + "pool: db\n")
    loaded = jobset.load_jobs([tmp_path])
    second = str(tmp_path / "b-settings.yaml")
    assert list(loaded.problems) == [second]
    (problem,) = loaded.problems[second]
    assert (problem.line, problem.column) == (2, 1)
    assert "a second settings file" in problem.message
    assert str(tmp_path / "a-settings.yaml") in problem.message
    assert loaded.settings is not None and dict(loaded.settings.pools) == {"db": 1}


def test_an_invalid_settings_file_is_reported_and_pools_are_not_judged(tmp_path: Path) -> None:
    write(tmp_path / "settings.yaml", "kind: settings\npools: {db: -1}\n")
    write(tmp_path / "job.yaml", JOB + "pool: db\n")
    loaded = jobset.load_jobs([tmp_path])
    assert list(loaded.problems) == [str(tmp_path / "settings.yaml")]
    assert loaded.settings is None and set(loaded.jobs) == {"job"}


def test_load_job_refuses_the_settings_file(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.yaml", "# top\nkind: settings\n")
    with pytest.raises(JobInvalid) as caught:
        spec.load_job(path)
    assert [(p.line, p.column) for p in caught.value.problems] == [(2, 7)]
    assert "settings file" in caught.value.problems[0].message


def test_find_settings_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", JOB)
    assert spec.find_settings_file(tmp_path) is None
    path = write(tmp_path / "sub" / "settings.yml", "kind: settings\n")
    assert spec.find_settings_file(tmp_path) == path


def test_the_daemons_catalog_does_not_take_the_settings_file_for_a_job(tmp_path: Path) -> None:
    write(tmp_path / "settings.yaml", SETTINGS)
    write(tmp_path / "a.yaml", JOB)
    catalog = Catalog(tmp_path)
    catalog.scan()
    assert set(catalog.jobs) == {"a"} and catalog.problems == {}


def test_validate_counts_the_settings_file_and_reports_its_errors(tmp_path: Path) -> None:
    write(tmp_path / "settings.yaml", SETTINGS)
    write(tmp_path / "a.yaml", JOB)
    result = CliRunner().invoke(main, ["validate", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 files valid" in result.stderr
    write(tmp_path / "settings.yaml", "kind: settings\nmax_active_runs: 0\n")
    result = CliRunner().invoke(main, ["validate", str(tmp_path), "--format", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    (bad,) = [f for f in answer["files"] if not f["valid"]]
    assert bad["file"] == str(tmp_path / "settings.yaml") and bad["job"] is None
    assert bad["errors"][0]["line"] == 2 and bad["errors"][0]["column"] == 18


# -- defaults ----------------------------------------------------------------------------------


def test_every_job_gets_the_defaults_it_does_not_set(tmp_path: Path) -> None:
    write(tmp_path / "settings.yaml", SETTINGS)
    write(tmp_path / "plain.yaml", """\
        schedule: ["30 2 * * *", "every 15m", {cron: "0 * * * *"}, {at: "2030-01-01T09:00"}]
        steps:
          - {id: a, run: "true", for_each: [1, 2]}
          - {id: b, run: "true", for_each: [1, 2], max_parallel: 1}
        """)
    write(tmp_path / "own.yaml", """\
        schedule: {cron: "30 2 * * *", timezone: UTC}
        timeout: 1m
        retries: 0
        history: {keep_days: 3}
        notify: []
        steps:
          - {id: a, run: "true"}
        """)
    loaded = jobset.load_jobs([tmp_path])
    assert loaded.problems == {}
    plain, own = loaded.jobs["plain"], loaded.jobs["own"]
    berlin = ZoneInfo("Europe/Berlin")
    assert [s.timezone for s in plain.schedules] == [berlin] * 4
    assert [s.text for s in plain.schedules] == ["30 2 * * *", "every 15m", "0 * * * *",
                                                 "at 2030-01-01T09:00"]
    assert plain.schedules[3].at is not None and plain.schedules[3].at.tzinfo == berlin
    assert plain.timeout == 6 * 3600
    assert plain.retries.limit == 2 and plain.retries.delay == 10
    assert plain.history.keep_runs == 20
    assert [t.kind for t in plain.notify] == [TargetKind.WEBHOOK, TargetKind.EMAIL]
    assert [s.max_parallel for s in plain.steps] == [4, 1]
    assert own.schedules[0].timezone == ZoneInfo("UTC")
    assert (own.timeout, own.retries.limit, own.notify) == (60, 0, ())
    assert own.history.keep_runs is None and own.history.keep_days == 3
    # The stored document holds the defaults: a node without the jobs directory rebuilds
    # the same job from a run's record.
    again = job_from_record(plain.document, name=plain.name, file=plain.file,
                                 sha256=plain.sha256)
    assert again.schedules == plain.schedules and again.notify == plain.notify
    assert again.timeout == plain.timeout
    assert [replace(s, line=0) for s in plain.steps] == list(again.steps)


def test_apply_defaults_leaves_the_document_and_other_schedules_alone() -> None:
    loaded = Settings()
    data = {"schedule": "@reboot", "steps": [{"id": "a", "run": "true"}]}
    assert apply_defaults(data, loaded.defaults) is data
    settings = settings_module._build({"kind": "settings", "defaults": {
        "timezone": "UTC", "max_parallel": 2}}, "s.yaml", "")
    merged = apply_defaults(data, settings.defaults)
    assert merged["schedule"] == "@reboot"  # an event, not a time: no zone to give
    assert data == {"schedule": "@reboot", "steps": [{"id": "a", "run": "true"}]}
    entry = {"file": "in/*.csv"}
    assert apply_defaults({"schedule": entry, "steps": []}, settings.defaults)["schedule"] \
        is entry


def test_a_job_given_settings_gets_its_defaults_through_load_job(tmp_path: Path) -> None:
    given = load_settings(write(tmp_path / "s" / "settings.yaml", SETTINGS))
    job = spec.load_job(write(tmp_path / "a.yaml", JOB), settings=given)
    assert job.timeout == 6 * 3600 and job.schedules[0].timezone == ZoneInfo("Europe/Berlin")
    assert spec.load_job(tmp_path / "a.yaml").timeout is None


# -- pools, email, notify and deadline in a job ----------------------------------------------


def job_errors(tmp_path: Path, text: str, settings: str | None = SETTINGS,
               ) -> list[tuple[int, int, str]]:
    if settings is not None:
        write(tmp_path / "settings.yaml", settings)
    path = write(tmp_path / "job.yaml", text)
    loaded = jobset.load_jobs([tmp_path])
    return [(p.line, p.column, p.message) for p in loaded.problems.get(str(path), ())]


def test_a_pool_the_settings_do_not_define_is_an_error_where_it_is_named(
        tmp_path: Path) -> None:
    found = job_errors(tmp_path, """\
        pool: dbb
        steps:
          - {id: a, run: "true", pool: {name: gpus}}
          - {id: b, run: "true", pool: {name: db, slots: 3}}
          - {id: c, run: "true", pool: {name: gpu, slots: 1}}
        """)
    assert found == [
        (1, 7, "pool: there is no pool 'dbb' (did you mean 'db'?) (pools: db, gpu)"),
        (3, 39, "steps[0].pool.name: there is no pool 'gpus' (did you mean 'gpu'?) "
                "(pools: db, gpu)"),
        (4, 50, "steps[1].pool.slots: asks for 3 slots of pool 'db', which has 2"),
    ]


def test_pools_are_built_into_the_job_and_its_steps(tmp_path: Path) -> None:
    assert job_errors(tmp_path, """\
        pool: db
        steps:
          - {id: a, run: "true", pool: {name: gpu}}
          - {id: b, run: "true", pool: {name: db, slots: 2}}
        """) == []
    job = jobset.load_jobs([tmp_path]).jobs["job"]
    assert job.pool == Pool("db", 1)
    assert [s.pool for s in job.steps] == [Pool("gpu", 1), Pool("db", 2)]


def test_a_directory_without_a_settings_file_has_no_pools(tmp_path: Path) -> None:
    found = job_errors(tmp_path, JOB + "pool: db\n", settings=None)
    assert found == [(4, 7, "pool: there is no pool 'db' (the jobs directory has no settings "
                            "file with pools:)")]
    # A single file on its own is not judged: where it will run is not known.
    assert jobset.load_jobs([tmp_path / "job.yaml"]).problems == {}


def test_an_email_target_needs_the_settings_smtp(tmp_path: Path) -> None:
    text = JOB + "notify:\n  - email: {to: [ops@example.com]}\n"
    assert job_errors(tmp_path, text) == []
    no_smtp = "kind: settings\npools: {db: 1}\n"
    assert job_errors(tmp_path, text, no_smtp) == [
        (5, 12, "notify[0].email: email needs an SMTP server: set smtp: in the settings file "
               "(kind: settings) of the jobs directory")]


def test_notify_templates_read_secrets_params_job_and_run(tmp_path: Path) -> None:
    found = job_errors(tmp_path, """\
        secrets: {TOKEN: {env: T}}
        params: {channel: ops}
        steps:
          - {id: a, run: "true"}
        notify:
          - webhook:
              url: "${{ secrets.HOOK_URL }}"
              headers: {Authorization: "Bearer ${{ secrets.TOKEN }}",
                        X-Run: "${{ run.id }} ${{ run.status }}"}
          - slack: {webhook_url: "https://hooks.example/${{ secrets.NOPE }}",
                    channel: "${{ params.channel }}"}
          - command: [notify-send, "${{ steps.a.status }}", "${{ env.HOME }}"]
        """)
    assert [(line, column) for line, column, _ in found] == [(10, 53), (12, 33), (12, 58)]
    assert "there is no secret 'NOPE'" in found[0][2]
    assert "steps is not there when a notification is sent" in found[1][2]
    assert "env is not there" in found[2][2]


def test_the_settings_secrets_are_for_notify_targets_not_for_steps(tmp_path: Path) -> None:
    found = job_errors(tmp_path, """\
        steps:
          - {id: a, run: "curl ${{ secrets.HOOK_URL }}"}
        notify:
          - webhook: {url: "${{ secrets.HOOK_URL }}"}
        """)
    assert [(line, column) for line, column, _ in found] == [(2, 28)]
    assert "there is no secret 'HOOK_URL'" in found[0][2]


def test_notify_and_deadline_are_built(tmp_path: Path) -> None:
    assert job_errors(tmp_path, """\
        deadline: 30m
        steps:
          - {id: a, run: "true"}
        notify:
          - when: [failure, late]
            webhook: {url: "https://hooks.example/x", headers: {X-Team: ops}}
            cooldown: 30m
            timeout: 5s
          - ping: "https://hc.example/ping/UUID"
          - slack: {webhook_url: "https://hooks.slack.example/T", channel: "#ops"}
          - command: [/usr/local/bin/page-oncall, --urgent]
        """) == []
    job = jobset.load_jobs([tmp_path]).jobs["job"]
    assert job.deadline == 1800
    hook, ping, slack, command = job.notify
    assert (hook.cooldown, hook.timeout, hook.when) == (
        1800, 5, {NotifyEvent.FAILURE, NotifyEvent.LATE})
    assert ping.when == {NotifyEvent.START, NotifyEvent.SUCCESS, NotifyEvent.FAILURE}
    assert ping.url == "https://hc.example/ping/UUID" and ping.timeout == 10
    assert slack.channel == "#ops" and slack.label == "notify[2] slack"
    assert command.command == ("/usr/local/bin/page-oncall", "--urgent")


@pytest.mark.parametrize(("text", "expected"), [
    ("deadline: 0s\n", (4, 11, "deadline: must be longer than 0")),
    ("deadline: soon\n", (4, 11, "deadline: expected a duration")),
    ("notify: [{when: [failed], ping: 'https://x'}]\n",
     (4, 18, "expected one of 'start', 'success'")),
    ("notify: [{webhook: {url: 'ftp://x'}}]\n", (4, 26, "expected an http:// or https:// URL")),
    ("notify: [{ping: 'https://x', timeout: 0}]\n", (4, 39, "must be longer than 0")),
    ("pool: {name: db, slots: 0}\n", (4, 25, "must be at least 1")),
])
def test_bad_notify_deadline_and_pool_values_are_located(
        tmp_path: Path, text: str, expected: tuple[int, int, str]) -> None:
    found = job_errors(tmp_path, JOB + text)
    line, column, words = expected
    assert any((at, c) == (line, column) and words in m for at, c, m in found), found

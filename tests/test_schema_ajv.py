"""The published schemas under ajv, the validator editors and most CI tools use, in strict mode.

ajv's strict mode refuses schemas that Python's jsonschema takes without a word: a ``required``
key that no ``properties`` next to it defines (``strictRequired``), a union ``type``
(``strictTypes``), an unknown keyword or format. Every schema ``pipeline`` publishes must compile
there: the committed files, and what ``pipeline schema [--runner NAME]`` prints (plug-ins
included). And ajv must say "valid" exactly where ``pipeline``'s own schema check does.

ajv-cli comes from npm, pinned in ``tests/ajv/``, installed by ``bin/ajv --install`` (which
``.ci/run`` calls). Where it is not installed these tests fail under ``CI=true`` and are skipped
otherwise, saying how to install it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from pipeline import yamlsafe
from pipeline.cli import main
from pipeline.runners import load_runners

pytestmark = pytest.mark.slow  # node runs ajv-cli, once per schema and corpus

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
CORPUS = Path(__file__).parent / "corpus"
AJV_DIR = Path(os.environ.get("PIPELINE_AJV_DIR") or ROOT / ".cache" / "ajv")
STRICT = ["--spec=draft2020", "--strict=true", "-c", "ajv-formats"]
# Valid for pipeline, and so for ajv: URLs with an expression inside (a `format: uri` would
# have ajv refuse them), an env value of each allowed type.
MORE = {
    "url-with-expression": {"steps": [{"id": "a", "uses": "http", "with": {
        "url": "https://status.internal/${{ params.path }}?x=${{ item }}",
        "proxy": "http://${{ params.proxy }}:3128"}}]},
    "wait-for-url-with-expression": {"steps": [{"id": "a", "uses": "wait_for", "with": {
        "url": "http://localhost:${{ params.port }}/health"}}]},
    "env-types": {"env": {"A": "x", "B": 2, "C": 2.5, "D": True},
                  "steps": [{"id": "a", "run": "true"}]},
    "env-null": {"env": {"A": None}, "steps": [{"id": "a", "run": "true"}]},
    "two-actions": {"steps": [{"id": "a", "run": "true", "exec": ["true"]}]},
    "json-and-body": {"steps": [{"id": "a", "uses": "http", "with": {
        "url": "https://x.invalid", "json": {}, "body": ""}}]},
    "notify-and-pools": {"deadline": "30m", "pool": {"name": "db", "slots": 2}, "notify": [
        {"when": ["failure", "late"], "webhook": {"url": "${{ secrets.HOOK_URL }}",
                                                  "headers": {"X-Team": "ops"}}},
        {"ping": "https://hc.example/ping/UUID"}, {"command": ["/bin/page"], "timeout": 5},
        {"slack": {"webhook_url": "https://hooks.example/x", "channel": "#ops"},
         "cooldown": "30m"}],
        "steps": [{"id": "a", "run": "true", "pool": "gpu"}]},
    "notify-two-kinds": {"notify": [{"ping": "https://x", "command": ["x"]}],
                         "steps": [{"id": "a", "run": "true"}]},
    "notify-bad-event": {"notify": [{"when": ["failed"], "ping": "https://x"}],
                         "steps": [{"id": "a", "run": "true"}]},
}
# Settings files: ajv and pipeline's own check must agree on these too.
SETTINGS_DOCUMENTS = {
    "full": {"kind": "settings", "pools": {"db": 2, "gpu": 1}, "max_active_runs": 50,
             "defaults": {"timezone": "Europe/Berlin", "timeout": "6h", "retries": 2,
                          "history": {"keep_runs": 10, "keep_days": "36h"},
                          "max_parallel": 4, "notify": [
                              {"when": ["failure"], "email": {"to": ["ops@example.com"]}}]},
             "smtp": {"host": "smtp.internal", "port": 587, "starttls": True,
                      "from": "pipeline@example.com", "username": "u",
                      "password": {"env": "SMTP_PASSWORD"}},
             "secrets": {"HOOK_URL": {"file": "/run/secrets/hook"}}, "x-anchor": [1]},
    "bare": {"kind": "settings"},
    "no-kind": {"pools": {"db": 1}},
    "other-kind": {"kind": "job"},
    "pool-zero": {"kind": "settings", "pools": {"db": 0}},
    "bad-pool-name": {"kind": "settings", "pools": {"../db": 1}},
    "password-without-user": {"kind": "settings",
                              "smtp": {"host": "h", "from": "a@b.c", "password": {"env": "X"}}},
    "secret-env-and-file": {"kind": "settings", "secrets": {"A": {"env": "X", "file": "/y"}}},
    "unknown-default": {"kind": "settings", "defaults": {"concurrency": "allow"}},
}


@pytest.fixture(scope="module")
def ajv() -> list[str]:
    """The command that runs ajv-cli (bin/ajv, which reinstalls only if its lock changed)."""
    if not (AJV_DIR / ".installed").is_file():
        reason = (f"ajv-cli is not installed in {AJV_DIR}: run bin/ajv --install "
                  "(needs node and npm)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return [str(ROOT / "bin" / "ajv")]


def published(tmp_path: Path) -> dict[str, Path]:
    """Every schema a user can get: the committed files and `pipeline schema`'s output."""
    found = {"schemas/job.schema.json": SCHEMAS / "job.schema.json",
             "schemas/settings.schema.json": SCHEMAS / "settings.schema.json"}
    for path in sorted((SCHEMAS / "runners").glob("*.schema.json")):
        found[f"schemas/runners/{path.name}"] = path
    registry, problems = load_runners()
    assert problems == []
    for args in [[], *(["--runner", name] for name in sorted(registry))]:
        result = CliRunner().invoke(main, ["schema", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        label = " ".join(["pipeline schema", *args])
        path = tmp_path / (label.replace(" ", "_").replace("-", "") + ".json")
        path.write_text(result.stdout, encoding="utf-8")
        found[label] = path
    return found


def test_every_published_schema_compiles_in_ajv_strict_mode(ajv: list[str],
                                                          tmp_path: Path) -> None:
    schemas = published(tmp_path)
    assert "pipeline schema --runner echo" in schemas  # the test plug-in: plug-ins count too
    refused = {}
    for label, path in schemas.items():
        done = subprocess.run([*ajv, "compile", *STRICT, "-s", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0 or "is valid" not in done.stdout:
            refused[label] = (done.stdout + done.stderr).strip()
    assert refused == {}


def test_ajv_and_pipeline_agree_on_which_files_are_valid(ajv: list[str],
                                                         tmp_path: Path) -> None:
    schema = json.loads((SCHEMAS / "job.schema.json").read_text(encoding="utf-8"))
    ours = Draft202012Validator(schema)
    data = tmp_path / "data"
    data.mkdir()
    expected = {}
    for path in sorted([*CORPUS.glob("*/*.yaml"), *(ROOT / "jobs.d").glob("*.yaml")]):
        try:
            document = yamlsafe.parse(path.read_bytes()).data
        except yamlsafe.Refused:
            continue
        target = data / f"{path.parent.name}--{path.stem.replace(' ', '_')}.json"
        target.write_text(json.dumps(document), encoding="utf-8")
        expected[target.name] = ours.is_valid(document)
    for name, document in MORE.items():
        (data / f"more--{name}.json").write_text(json.dumps(document), encoding="utf-8")
        expected[f"more--{name}.json"] = ours.is_valid(document)
    assert expected["more--url-with-expression.json"]
    assert not expected["more--env-null.json"]
    assert len(expected) > 80
    assert any(expected.values()) and not all(expected.values())
    done = subprocess.run([*ajv, "validate", *STRICT, "--errors=no", "-s",
                           str(SCHEMAS / "job.schema.json"), "-d", str(data / "*.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    said = {}
    for line in (done.stdout + done.stderr).splitlines():
        name, _, verdict = line.rpartition(" ")
        if verdict in ("valid", "invalid") and name:
            said[Path(name).name] = verdict == "valid"
    assert set(said) == set(expected), done.stderr
    assert {k: v for k, v in said.items() if v != expected[k]} == {}


def test_ajv_and_pipeline_agree_on_settings_files(ajv: list[str], tmp_path: Path) -> None:
    schema = json.loads((SCHEMAS / "settings.schema.json").read_text(encoding="utf-8"))
    ours = Draft202012Validator(schema)
    expected = {}
    for name, document in SETTINGS_DOCUMENTS.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(document), encoding="utf-8")
        expected[f"{name}.json"] = ours.is_valid(document)
    assert expected["full.json"] and expected["bare.json"]
    assert sum(expected.values()) == 2
    done = subprocess.run([*ajv, "validate", *STRICT, "--errors=no", "-s",
                           str(SCHEMAS / "settings.schema.json"), "-d",
                           str(tmp_path / "*.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    said = {}
    for line in (done.stdout + done.stderr).splitlines():
        name, _, verdict = line.rpartition(" ")
        if verdict in ("valid", "invalid") and name:
            said[Path(name).name] = verdict == "valid"
    assert said == expected, done.stderr

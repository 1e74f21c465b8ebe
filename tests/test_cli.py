"""The command line, as a user drives it: exit codes, formats, and real `pipeline` processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import process
from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = [sys.executable, "-m", "pipeline"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    d = tmp_path / "jobs.d"
    write(d / "hello.yaml", """
        params:
          who: {type: string, default: world}
          times: {type: integer, default: 1}
        steps:
          - id: greet
            run: echo "hello ${{ params.who }} x${{ params.times }}"
          - id: after
            needs: [greet]
            run: echo "n=2" >> "$PIPELINE_OUTPUT"
    """)
    write(d / "fails.yaml", """
        steps:
          - {id: boom, run: "echo about to fail; exit 4"}
    """)
    return d


def state_args(tmp_path: Path, jobs: Path) -> list[str]:
    return ["--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state")]


def test_validate_exit_codes_and_formats(tmp_path: Path, jobs: Path) -> None:
    code, out, err = cli("validate", "--jobs-dir", str(jobs))
    assert code == 0, out + err
    assert "2 files valid" in err
    bad = write(tmp_path / "bad" / "bad.yaml", """
        steps:
          - id: a
            run: "true"
            neds: [b]
    """)
    code, out, _ = cli("validate", str(bad))
    assert code == 1
    assert out.startswith(f"{bad}:5:5: error: ")
    code, out, _ = cli("validate", "--format", "json", str(bad))
    answer = json.loads(out)
    assert code == 1 and answer["valid"] is False
    assert answer["files"][0]["errors"][0]["line"] == 5
    code, out, _ = cli("validate", "--format", "github", str(bad))
    assert out.startswith(f"::error file={bad},line=5,col=5::")
    code, _, _ = cli("validate", str(tmp_path / "missing.yaml"))
    assert code == 2


def test_run_show_runs_logs(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    code, out, err = cli("run", *args, "hello", "-p", "who=ops team", "-p", "times=3")
    assert code == 0, out + err
    assert "greet: succeeded" in out
    code, out, _ = cli("runs", *args, "--json")
    runs = json.loads(out)
    assert code == 0 and len(runs) == 1
    run = runs[0]
    assert run["job"] == "hello" and run["status"] == "succeeded" and run["trigger"] == "manual"
    assert run["params"] == {"who": "ops team", "times": 3}
    code, out, _ = cli("show", *args, run["id"], "--json")
    shown = json.loads(out)
    assert [s["id"] for s in shown["steps"]] == ["greet", "after"]
    assert shown["steps"][1]["outputs"] == {"n": "2"}
    assert shown["version"]["sha256"]
    code, out, _ = cli("logs", *args, run["id"], "greet")
    assert code == 0 and out == "hello ops team x3\n"
    code, _, err = cli("show", *args, "20990101T000000-deadbeef")
    assert code == 1 and "no run" in err
    code, _, err = cli("logs", *args, "../../etc/passwd")
    assert code == 1


def test_show_prints_params_as_json_values(tmp_path: Path) -> None:
    jobs = write(tmp_path / "jobs.d" / "typed.yaml", """
        params:
          fail: {type: boolean, default: true}
          ratio: {type: number, default: 0.5}
          who: {type: string, default: ops}
          note: {type: string, default: "a b, c"}
          word: {type: string, default: "true"}
          empty: {type: string, default: ""}
        steps:
          - {id: a, run: "true"}
    """).parent
    args = state_args(tmp_path, jobs)
    assert cli("run", *args, "typed")[0] == 0
    [run] = json.loads(cli("runs", *args, "--json")[1])
    code, out, _ = cli("show", *args, run["id"])
    assert code == 0
    [line] = [x for x in out.splitlines() if x.startswith("params")]
    # As JSON writes them (true, not Python's True); a string bare unless it would read as
    # something else: with a space or comma, empty, or the word true.
    assert line == ('params   fail=true, ratio=0.5, who=ops, note="a b, c", word="true", '
                    'empty=""'), line


@pytest.mark.slow
@pytest.mark.parametrize("command", [["show", "RUN"], ["runs"], ["logs", "RUN"], ["list"]])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, jobs: Path, command: list[str]) -> None:
    """`pipeline show RUN | head`: once the reader is gone, the command ends as git does,
    with 141 (a SIGPIPE's status in the shell) and nothing on stderr."""
    args = state_args(tmp_path, jobs)
    assert cli("run", *args, "hello")[0] == 0
    [run] = json.loads(cli("runs", *args, "--json")[1])
    read, write_end = os.pipe()
    os.close(read)  # the reader has gone before the first line is written
    try:
        done = subprocess.run([*PIPELINE, *[run["id"] if c == "RUN" else c for c in command],
                               *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, ""), done.stderr


def test_run_exit_codes(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    assert cli("run", *args, "fails")[0] == 1
    code, _, err = cli("run", *args, "hello", "-p", "times=many")
    assert code == 2 and "times" in err
    code, _, err = cli("run", *args, "hello", "-p", "nope=1")
    assert code == 2 and "nope" in err
    code, _, err = cli("run", *args, "no-such-job")
    assert code == 2 and "unknown job" in err
    broken = write(tmp_path / "broken.yaml", "steps: []\n")
    code, _, err = cli("run", *args, str(broken))
    assert code == 2 and "broken.yaml:1:" in err


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    code, out, _ = cli("run", *args, "hello", "--dry-run", "-p", "who=$(id)")
    assert code == 0
    assert "echo \"hello \\$(id) x1\"" in out
    assert not (tmp_path / "state" / "state.db").exists() or \
        json.loads(cli("runs", *args, "--json")[1]) == []


def test_graph_formats(jobs: Path) -> None:
    code, out, _ = cli("graph", "--jobs-dir", str(jobs), "hello", "--format", "dot")
    assert code == 0 and "->" in out and "greet" in out
    code, out, _ = cli("graph", "--jobs-dir", str(jobs), "hello", "--format", "mermaid")
    assert code == 0 and "greet" in out


def test_schema_commands() -> None:
    code, out, _ = cli("schema")
    schema = json.loads(out)
    assert code == 0 and schema["$schema"].endswith("2020-12/schema")
    code, out, _ = cli("schema", "--runner", "sleep")
    assert code == 0 and "duration" in json.loads(out)["properties"]
    assert cli("schema", "--runner", "nope")[0] == 2


@pytest.mark.slow
def test_secret_appears_nowhere_under_the_state_directory(tmp_path: Path) -> None:
    secret = "Zq9-very-secret-value-4711"
    job = write(tmp_path / "jobs.d" / "secretive.yaml", """
        secrets:
          API_KEY: {env: TEST_API_KEY}
        steps:
          - id: use
            run: |
              echo "key is $API_KEY"
              echo "key=$API_KEY" >> "$PIPELINE_OUTPUT"
              echo "${{ secrets.API_KEY }}" >&2
          - id: fail
            needs: [use]
            run: "echo ${{ secrets.API_KEY }}; exit 1"
    """)
    state = tmp_path / "state"
    env = {**os.environ, "TEST_API_KEY": secret}
    done = subprocess.run([*PIPELINE, "run", "--state-dir", str(state), str(job)], env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 1
    assert secret.encode() not in done.stdout + done.stderr
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    shown = subprocess.run([*PIPELINE, "show", "--state-dir", str(state), "--json",
                            json.loads(subprocess.run(
                                [*PIPELINE, "runs", "--state-dir", str(state), "--json"],
                                capture_output=True, check=True).stdout)[0]["id"]],
                           capture_output=True, check=True)
    assert secret.encode() not in shown.stdout
    assert b"***" in shown.stdout


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_ctrl_c_cancels_the_run_kills_groups_and_exits_130(tmp_path: Path) -> None:
    job = write(tmp_path / "slow.yaml", """
        steps:
          - id: slow
            run: |
              sleep 300 &
              echo "child=$!" >> "$PIPELINE_OUTPUT"
              echo started
              sleep 300
    """)
    state = tmp_path / "state"
    proc = subprocess.Popen([*PIPELINE, "run", "--state-dir", str(state), str(job)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = state / "logs" / "slow"
    _wait_for(lambda: any(p.read_text() == "started\n" for p in log.rglob("*.log")))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    runs = json.loads(subprocess.run([*PIPELINE, "runs", "--state-dir", str(state), "--json"],
                                     capture_output=True, check=True).stdout)
    assert runs[0]["status"] == "cancelled"
    assert "SIGINT" in runs[0]["reason"]
    shown = json.loads(subprocess.run(
        [*PIPELINE, "show", "--state-dir", str(state), "--json", runs[0]["id"]],
        capture_output=True, check=True).stdout)
    assert shown["steps"][0]["status"] == "cancelled"
    assert process.processes_of_run(runs[0]["id"]) == []


@pytest.mark.slow
def test_kill_9_leaves_state_that_the_next_command_repairs(tmp_path: Path) -> None:
    job = write(tmp_path / "slow.yaml", """
        steps:
          - {id: slow, run: "echo started; sleep 300 & sleep 300"}
    """)
    state = tmp_path / "state"
    proc = subprocess.Popen([*PIPELINE, "run", "--state-dir", str(state), str(job)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = state / "logs" / "slow"
    _wait_for(lambda: any(p.read_text() == "started\n" for p in log.rglob("*.log")))
    proc.kill()
    proc.wait()
    runs = json.loads(subprocess.run([*PIPELINE, "runs", "--state-dir", str(state), "--json"],
                                     capture_output=True, check=True).stdout)
    assert runs[0]["status"] == "interrupted"
    _wait_for(lambda: process.processes_of_run(runs[0]["id"]) == [])
    db = sqlite3.connect(state / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


@pytest.mark.slow
def test_wheel_carries_the_schemas(tmp_path: Path) -> None:
    """`pipeline schema` from a built wheel, away from the checkout."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/schemas/job.schema.json" in names
    assert "pipeline/schemas/runners/sleep.schema.json" in names
    # The status pages' templates, stylesheet and script travel with the code.
    assert {"pipeline/templates/job.html", "pipeline/static/pipeline.css",
            "pipeline/static/pipeline.js"} <= set(names)
    target = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['pipeline', 'schema'];"
            "from pipeline.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"]
    where = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                            "import pipeline; print(pipeline.__file__)", str(target)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.startswith(str(target))


def test_hostile_parameters_are_refused(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    code, _, err = cli("run", *args, "hello", "-p", "who=a\0b")
    assert code == 2 and "NUL" in err
    code, _, err = cli("run", *args, "hello", "-p", "who=" + "x" * 200_000)
    assert code == 2 and "longer than" in err


def test_a_plugin_runner_is_found_when_a_job_uses_one(tmp_path: Path) -> None:
    pytest.importorskip("pipeline_echo", reason="bin/test installs tests/plugin")
    job = write(tmp_path / "jobs.d" / "plug.yaml", """
        steps:
          - {id: hello, uses: echo, with: {message: "hi from ${{ job.name }}", times: 2}}
    """)
    state = tmp_path / "state"
    code, out, err = cli("run", "--state-dir", str(state), str(job))
    assert code == 0, out + err
    code, out, _ = cli("logs", "--state-dir", str(state),
                       json.loads(cli("runs", "--state-dir", str(state), "--json")[1])[0]["id"],
                       "hello")
    assert out == "hi from plug\nhi from plug\n"
    bad = write(tmp_path / "bad.yaml", """
        steps:
          - {id: hello, uses: ecoh, with: {}}
    """)
    code, out, _ = cli("validate", str(bad))
    assert code == 1
    assert "unknown runner 'ecoh'" in out and "echo" in out  # plug-ins are suggested too


@pytest.mark.slow
def test_the_pre_commit_hook_validates_job_files(tmp_path: Path) -> None:
    """`.pre-commit-hooks.yaml` as pre-commit reads it: its entry, run on the files it picks."""
    import re

    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "pipeline-validate")
    picks = re.compile(hook["files"])
    skips = re.compile(hook["exclude"])
    assert picks.search("jobs.d/backup.yaml") and picks.search("ops/jobs.d/x/y.yml")
    assert not picks.search("README.md") and not picks.search("schemas/job.schema.json")
    assert skips.search("jobs.d/.hidden.yaml") and skips.search("jobs.d/x.yaml~")
    good = write(tmp_path / "jobs.d" / "good.yaml", "steps:\n  - {id: a, run: 'true'}\n")
    bad = write(tmp_path / "jobs.d" / "bad.yaml", "steps:\n  - {id: a, rn: 'true'}\n")
    entry = hook["entry"].split()
    assert entry[0] == "pipeline"
    ok = subprocess.run([*PIPELINE, *entry[1:], str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*PIPELINE, *entry[1:], str(good), str(bad)], capture_output=True,
                            text=True)
    assert failed.returncode == 1
    assert failed.stdout.startswith(f"{bad}:2:")


def test_a_manual_run_has_the_instant_it_was_asked_for_as_its_fire_time(
        tmp_path: Path, jobs: Path) -> None:
    write(jobs / "dated.yaml", """
        steps:
          - {id: s, run: 'echo "fire=$PIPELINE_FIRE_TIME" >> "$PIPELINE_OUTPUT"'}
    """)
    args = state_args(tmp_path, jobs)
    code, out, err = cli("run", *args, "dated")
    assert code == 0, out + err
    _, out, _ = cli("runs", *args, "dated", "--json")
    [run] = json.loads(out)
    assert run["fire_time"] and run["fire_time"] == run["queued_at"]
    _, out, _ = cli("show", *args, run["id"], "--json")
    fire = json.loads(out)["steps"][0]["outputs"]["fire"]
    assert datetime.fromisoformat(fire) == datetime.fromisoformat(run["fire_time"])


def test_show_and_logs_follow_the_file_with_outputs_items_and_markers(
        tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.d"
    write(jobs / "fan.yaml", """
        outputs:
          joined: "${{ steps.join.outputs.all }}"
        steps:
          - id: first
            run: echo first
          - id: fe
            needs: [first]
            for_each: [a, "b c"]
            run: |
              echo "item ${{ item }}"
              echo "v=${{ item }}!" >> "$PIPELINE_OUTPUT"
          - id: join
            needs: [fe]
            run: echo "all=${{ (steps.fe.outputs.v | fromjson) | join(',') }}" >> "$PIPELINE_OUTPUT"
          - id: quiet
            run: exit 7
            continue_on_error: true
    """)
    args = state_args(tmp_path, jobs)
    code, _, err = cli("run", *args, "fan")
    assert code == 0, err
    run_id = json.loads(cli("runs", *args, "--json")[1])[0]["id"]
    code, out, _ = cli("show", *args, run_id, "--json")
    shown = json.loads(out)
    # quiet started second (it needs nothing), but is listed where the file has it
    assert [s["id"] for s in shown["steps"]] == ["first", "fe", "fe.0", "fe.1", "join", "quiet"]
    assert shown["outputs"] == {"joined": "a!,b c!"}
    assert shown["steps"][1]["outputs"] == {"v": '["a!", "b c!"]'}
    assert shown["steps"][2]["item"] == '"a"'
    code, out, _ = cli("show", *args, run_id)
    assert "outputs  joined=a!,b c!" in out
    assert [line.split()[0] for line in out.splitlines()[-6:]] == [
        "first", "fe", "fe.0", "fe.1", "join", "quiet"]
    code, out, _ = cli("logs", *args, run_id, "fe")
    assert code == 0
    assert out == "==> fe[0] (item: a) <==\nitem a\n==> fe[1] (item: b c) <==\nitem b c\n"
    assert cli("logs", *args, run_id, "fe.1")[1] == "item b c\n"
    assert cli("logs", *args, run_id, "quiet")[1] == "[pipeline] exit status 7\n"
    code, out, _ = cli("logs", *args, run_id)
    assert out == ("==> first <==\nfirst\n==> fe[0] (item: a) <==\nitem a\n"
                   "==> fe[1] (item: b c) <==\nitem b c\n==> quiet <==\n"
                   "[pipeline] exit status 7\n")


@pytest.mark.slow
def test_ctrl_c_ends_logs_follow_quietly(tmp_path: Path) -> None:
    job = write(tmp_path / "slow.yaml", """
        steps:
          - {id: slow, run: "echo started; sleep 300"}
    """)
    state = tmp_path / "state"
    running = subprocess.Popen([*PIPELINE, "run", "--state-dir", str(state), str(job)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = state / "logs" / "slow"
        _wait_for(lambda: any(p.read_text() == "started\n" for p in log.rglob("*.log")))
        run_id = next(log.iterdir()).name
        follower = subprocess.Popen([*PIPELINE, "logs", "--state-dir", str(state), "-f",
                                     run_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"==> slow <==\n"
        assert follower.stdout.readline() == b"started\n"
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=10)
        assert follower.returncode == 130
        assert b"Aborted" not in err and b"Traceback" not in err, err
    finally:
        running.send_signal(signal.SIGINT)
        running.communicate(timeout=30)


# -- errors reach the user as one line -------------------------------------------------------

def busy_port() -> socket.socket:
    """A port some other program listens on."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def pipeline(*args: str, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PIPELINE, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, **(env or {})})


def test_serve_on_a_busy_port_says_so_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    jobs = write(tmp_path / "jobs.d" / "tick.yaml", """
        schedule: {every: 1m, catchup: all}
        steps:
          - {id: t, run: "true"}
    """).parent
    state = tmp_path / "state"
    with busy_port() as taken:
        port = taken.getsockname()[1]
        done = pipeline("serve", "--listen", f"127.0.0.1:{port}", "--jobs-dir", str(jobs),
                        "--state-dir", str(state))
    assert done.returncode == 1
    assert done.stderr == f"pipeline: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert not state.exists()


@pytest.mark.slow
def test_serve_refuses_unusable_directories_and_token_files_in_one_line(tmp_path: Path) -> None:
    jobs = write(tmp_path / "jobs.d" / "a.yaml", "steps:\n  - {id: a, run: 'true'}\n").parent
    a_file = write(tmp_path / "plain-file", "x\n")
    empty = write(tmp_path / "empty-token", "\n")
    cases = [
        # (arguments, exit status, the one line)
        (["--state-dir", str(a_file / "state")], 1,
         f"pipeline: cannot lock {a_file}/state/daemon.lock: "),
        (["--jobs-dir", str(a_file)], 2,
         f"pipeline: the jobs directory {a_file} is not a directory"),
        (["--token-file", str(tmp_path / "missing")], 2,
         f"pipeline: cannot read the token file {tmp_path}/missing: No such file or directory"),
        (["--token-file", str(tmp_path)], 2,
         f"pipeline: cannot read the token file {tmp_path}: Is a directory"),
        (["--token-file", str(empty)], 2, f"pipeline: the token file {empty} is empty"),
    ]
    for args, code, line in cases:
        done = pipeline("serve", "--no-http", "--jobs-dir", str(jobs), "--state-dir",
                        str(tmp_path / "state"), *args)
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "state").exists()


def test_an_error_inside_a_trio_task_is_one_line_not_an_exception_group(tmp_path: Path) -> None:
    """`uses: job` under `pipeline run` looks its child up inside the run's nursery (a name
    from an expression: validation cannot know it)."""
    jobs = write(tmp_path / "jobs.d" / "parent.yaml", """
        params:
          which: {type: string, default: nochild}
        steps:
          - {id: call, uses: job, with: {job: "${{ params.which }}"}}
    """).parent
    done = pipeline("run", "--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state"),
                    "parent")
    assert done.returncode == 1
    assert "unknown job 'nochild'" in done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr


# -- looking creates nothing -----------------------------------------------------------------

def test_list_without_a_jobs_directory_says_so_and_creates_nothing(tmp_path: Path) -> None:
    done = pipeline("list", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("pipeline: the jobs directory jobs.d does not exist (give --jobs-dir "
                           "or set PIPELINE_JOBS_DIR)\n")
    typo = pipeline("serve", "--no-http", "--jobs-dir", "typo", cwd=tmp_path)
    assert typo.returncode == 2 and "the jobs directory typo does not exist" in typo.stderr
    assert list(tmp_path.iterdir()) == []


def test_read_only_commands_never_create_a_state_directory(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    state = tmp_path / "state"
    code, out, err = cli("list", *args, "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)} == {"hello", "fails"}
    assert all(r["last_run"] is None and r["circuit"] == "closed" for r in json.loads(out))
    code, out, err = cli("runs", *args)
    assert code == 0 and out == "" and "no runs yet" in err
    assert cli("runs", *args, "--json")[:2] == (0, "[]\n")
    assert cli("runs", *args, "hello")[0] == 0
    for command in (["show", "20261128T000000-00000001"], ["logs", "20261128T000000-00000001"]):
        code, _, err = cli(*command, *args)
        assert code == 1 and "no runs yet" in err, command
    assert cli("next", *args, "hello")[0] == 0
    assert not state.exists()
    assert cli("run", *args, "hello", "--dry-run")[0] == 0
    assert not state.exists()
    assert cli("run", *args, "hello")[0] == 0
    assert (state / "state.db").is_file()


# -- runs ------------------------------------------------------------------------------------

def test_runs_of_an_unknown_job_is_an_error_unless_it_ran(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    code, out, err = cli("runs", *args, "nosuchjob")
    assert code == 1 and out == ""
    assert "unknown job 'nosuchjob'" in err
    assert cli("run", *args, "hello")[0] == 0
    code, out, err = cli("runs", *args, "fails")  # a job file, no runs yet
    assert code == 0 and out == "" and "no runs of fails yet" in err
    (jobs / "hello.yaml").unlink()  # gone from the files, its history stays
    code, out, _ = cli("runs", *args, "hello")
    assert code == 0 and "succeeded" in out
    assert cli("runs", *args, "nosuchjob")[0] == 1


def seed_run(state: Path, job: str, *, owner: str | None, trigger: str = "manual",
             status: str | None = None, params: dict[str, object] | None = None) -> str:
    """A run in a real store, queued and started (and finished, with ``status``), held by a
    daemon node whose process is ``owner`` (a process identity; None: held by no node)."""
    from datetime import UTC, datetime, timedelta

    from pipeline.events import Event, RunFinished, RunQueued, RunStarted
    from pipeline.model import RunStatus, Trigger
    from pipeline.nodes import this_node
    from pipeline.statedir import new_run_id
    from pipeline.store.sqlite import SqliteStore

    now = datetime.now(UTC) - timedelta(seconds=5)
    run_id = new_run_id(now)
    store = SqliteStore.open(state)
    try:
        node = None
        if owner is not None:
            node = this_node()
            node = type(node)(**{**node.__dict__, "identity": owner})
            store.register_node(node, lease=30)
        events: list[Event] = [RunQueued(run_id, job, Trigger(trigger), now,
                                         node=node.id if node else None,
                                         params=params or {}), RunStarted(run_id, now)]
        if status is not None:
            events.append(RunFinished(run_id, RunStatus(status), now + timedelta(seconds=1)))
        store.record(events)
    finally:
        store.close()
    return run_id


DEAD_OWNER = "999999999:1"  # no such pid on this machine


def test_a_command_that_repairs_a_crash_says_what_it_recovered(tmp_path: Path,
                                                                jobs: Path) -> None:
    run_id = seed_run(tmp_path / "state", "hello", owner=DEAD_OWNER)
    code, out, err = cli("runs", *state_args(tmp_path, jobs), "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "interrupted"
    assert err.startswith(f"pipeline: warning: run {run_id} of hello was left running by a "
                          "node that was lost: marked interrupted")
    assert cli("runs", *state_args(tmp_path, jobs))[2] == ""  # repaired once


# -- times -----------------------------------------------------------------------------------

ISO_WITH_OFFSET = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d"


def test_list_runs_and_show_print_times_with_their_offset(tmp_path: Path) -> None:
    import re
    from datetime import datetime
    from zoneinfo import ZoneInfo

    jobs = write(tmp_path / "jobs.d" / "tokyo.yaml", """
        schedule: {cron: "0 9 * * *", timezone: Asia/Tokyo}
        steps:
          - {id: a, run: "true"}
    """).parent
    args = state_args(tmp_path, jobs)
    assert cli("run", *args, "tokyo")[0] == 0
    code, out, _ = cli("list", *args)
    assert code == 0
    assert re.search(r"\d{4}-\d\d-\d\d 09:00:00\+09:00", out), out
    code, out, _ = cli("runs", *args)
    started = re.search(ISO_WITH_OFFSET, out)
    assert started and started.group().endswith("+09:00"), out
    run = json.loads(cli("runs", *args, "--json")[1])[0]
    shown = datetime.fromisoformat(started.group())
    assert abs((shown - datetime.fromisoformat(run["started_at"])).total_seconds()) < 1
    assert shown.tzinfo and shown.utcoffset() == datetime.now(ZoneInfo("Asia/Tokyo")).utcoffset()
    code, out, _ = cli("show", *args, run["id"])
    assert code == 0 and re.search(r"started  " + ISO_WITH_OFFSET, out), out


# -- list ------------------------------------------------------------------------------------

def test_list_shows_each_jobs_circuit_breaker(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.d"
    for name in ("flaky", "steady"):
        write(jobs / f"{name}.yaml", """
            schedule: every 1h
            circuit_breaker: {after: 2, cooldown: 1h}
            steps:
              - {id: a, run: "true"}
        """)
    write(jobs / "plain.yaml", "steps:\n  - {id: a, run: 'true'}\n")
    state = tmp_path / "state"
    for _ in range(2):
        seed_run(state, "flaky", owner=None, trigger="schedule", status="failed")
    seed_run(state, "steady", owner=None, trigger="schedule", status="failed")
    args = state_args(tmp_path, jobs)
    rows = {r["name"]: r for r in json.loads(cli("list", *args, "--json")[1])}
    assert {n: r["circuit"] for n, r in rows.items()} == {
        "flaky": "open", "steady": "closed", "plain": "closed"}
    header, *lines = cli("list", *args)[1].splitlines()
    at = header.index("CIRCUIT")
    circuits = {line.split()[0]: line[at:].split()[0] for line in lines}
    assert circuits == {"flaky": "open", "steady": "closed", "plain": "closed"}


# -- pipeline run and the daemon's runs -------------------------------------------------------

def test_run_refuses_while_another_run_of_a_forbid_job_is_active(tmp_path: Path,
                                                                  jobs: Path) -> None:
    from pipeline.daemon import DAEMON_FILE
    from pipeline.nodes import machine_identity
    from pipeline.statedir import process_identity

    args = state_args(tmp_path, jobs)
    state = tmp_path / "state"
    # A run left by a dead process does not count: recovery ends it first.
    seed_run(state, "hello", owner=DEAD_OWNER)
    assert cli("run", *args, "hello")[0] == 0
    # One of a live daemon (this test process stands in for it) does.
    (state / DAEMON_FILE).write_text(json.dumps({"pid": os.getpid(),
                                                 "owner": process_identity()}))
    active = seed_run(state, "hello", owner=machine_identity())
    code, out, err = cli("run", *args, "hello")
    assert code == 1 and out == ""
    assert err.startswith(f"pipeline: job hello has an active run: {active}, running since "
                          f"20")
    assert f"by the daemon (pid {os.getpid()})" in err and "concurrency: forbid" in err
    assert "--force" in err
    assert len(json.loads(cli("runs", *args, "--json")[1])) == 3  # nothing new recorded
    code, out, err = cli("run", *args, "hello", "--force")
    assert code == 0, err
    assert "--force" in cli("run", "--help")[1]



# -- what --help and the README say ----------------------------------------------------------

def test_help_and_readme_agree_with_the_code_on_graces_and_tokens() -> None:
    from pipeline.cli.daemon import serve
    from pipeline.model import Step

    readme = " ".join((ROOT / "README.md").read_text().split())
    shutdown = next(p for p in serve.params if p.name == "grace").default
    step = f"{Step.__dataclass_fields__['grace'].default:g}s"
    assert (shutdown, step) == ("30s", "10s")
    assert f"`serve` first gives active runs {shutdown} to finish (`--grace`)" in readme
    assert f"SIGKILL after the step's `grace` (default {step})" in readme
    help_text = " ".join(cli("serve", "--help")[1].split())
    assert f"[default: {shutdown}]" in help_text and f"the step's own grace, {step}" in help_text
    for command in ("serve", "trigger", "stop"):
        help_text = " ".join(cli(command, "--help")[1].split())
        assert "--token-file PATH" in help_text and "PIPELINE_TOKEN_FILE" in help_text, command
        assert "`ps`: prefer --token-file" in help_text, command


def test_a_token_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", " \n")
    for args, env, line in (
            (["--token-file", str(tmp_path / "nope")], None,
             f"pipeline: cannot read the token file {tmp_path}/nope: No such file or directory\n"),
            ([], {"PIPELINE_TOKEN_FILE": str(empty)},
             f"pipeline: the token file {empty} is empty\n")):
        for command in (["trigger", "a"], ["stop", "20261128T000000-00000001"]):
            code, out, err = cli(*command, "--state-dir", str(tmp_path / "state"), *args,
                                 env=env)
            assert (code, out, err) == (2, "", line), command


def test_run_hands_a_child_jobs_outputs_to_its_parent(tmp_path: Path) -> None:
    """Issue 9.1: under `pipeline run` the child runs in this process; its own outputs come
    back to the parent's step."""
    jobs = write(tmp_path / "jobs.d" / "parent.yaml", """
        steps:
          - {id: call, uses: job, with: {job: child, params: {who: x}}}
    """).parent
    write(jobs / "child.yaml", """
        params: {who: {type: string}}
        steps:
          - {id: s, run: 'echo "greeting=hi ${{ params.who }}" >> "$PIPELINE_OUTPUT"'}
        outputs: {greeting: "${{ steps.s.outputs.greeting }}"}
    """)
    args = ["--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state")]
    code, out, err = cli("run", *args, "parent")
    assert code == 0, out + err
    [run] = [r for r in json.loads(cli("runs", *args, "--json")[1]) if r["job"] == "parent"]
    shown = json.loads(cli("show", *args, run["id"], "--json")[1])
    outputs = shown["steps"][0]["outputs"]
    assert outputs["greeting"] == "hi x" and outputs["status"] == "succeeded"


def test_nodes_lists_the_processes_that_held_runs(tmp_path: Path, jobs: Path) -> None:
    args = state_args(tmp_path, jobs)
    assert cli("nodes", *args)[0] == 1  # no state yet: says so
    assert cli("run", *args, "hello")[0] == 0
    code, out, _ = cli("nodes", *args, "--json")
    [node] = json.loads(out)
    assert code == 0 and node["state"] == "left" and node["roles"] == ["runner"]
    assert node["name"].startswith("pipeline-run-") and node["jobs_match"] is None
    code, out, _ = cli("nodes", *args)
    assert code == 0 and "pipeline-run-" in out and "left" in out


@pytest.mark.parametrize(("option", "message"), [
    (["--labels", "zone"], "--labels: 'zone' is not KEY=VALUE"),
    (["--roles", "scheduler,cook"], "--roles: cook; the roles are"),
    (["--node-name", "a b"], "--node-name: 'a b' is not a name"),
])
def test_serve_refuses_bad_node_options_in_one_line(tmp_path: Path, jobs: Path,
                                                    option: list[str], message: str) -> None:
    code, _, err = cli("serve", *state_args(tmp_path, jobs), "--no-http", *option)
    assert code == 2 and err.startswith(f"pipeline: {message}"), err
    assert not (tmp_path / "state").exists()


def test_a_store_file_that_cannot_be_read_is_one_line(tmp_path: Path, jobs: Path) -> None:
    code, _, err = cli("runs", *state_args(tmp_path, jobs), "--store-file",
                       str(tmp_path / "missing"))
    assert code == 2 and err.startswith("pipeline: cannot read the store URL from"), err
    (tmp_path / "empty").write_text("\n")
    code, _, err = cli("runs", *state_args(tmp_path, jobs), "--store-file",
                       str(tmp_path / "empty"))
    assert code == 2 and "is empty" in err


def test_pause_resume_reset_and_why(tmp_path: Path, jobs: Path) -> None:
    write(jobs / "nightly.yaml", """
        schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
        steps:
          - {id: s, run: "true"}
    """)
    args = state_args(tmp_path, jobs)
    assert cli("pause", *args, "nope")[0] == 1  # unknown
    assert cli("pause", *args)[0] == 2  # neither jobs nor --all
    code, out, _ = cli("pause", *args, "nightly", "--reason", "db migration")
    assert code == 0 and out == "paused nightly\n"
    listed = {r["name"]: r for r in json.loads(cli("list", *args, "--json")[1])}
    assert listed["nightly"]["paused"] and listed["nightly"]["paused_reason"] == "db migration"
    assert not listed["hello"]["paused"]
    assert "[paused]" in cli("list", *args)[1]
    code, out, _ = cli("why", *args, "nightly")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "no decisions recorded yet"
    assert lines[-1].startswith("next 20") and "30 2 * * *" in lines[-1]
    assert "Europe/Berlin; but paused since" in lines[-1] and "db migration" in lines[-1]
    # The zone once: describe() already names a cron schedule's zone.
    assert ': cron "30 2 * * *" Europe/Berlin; but paused since' in lines[-1], lines[-1]
    assert json.loads(cli("why", *args, "nightly", "--json")[1])["decisions"] == []
    code, out, _ = cli("resume", *args, "nightly")
    assert code == 0 and out == "resumed nightly\n"
    assert "paused" not in cli("why", *args, "nightly")[1]
    assert cli("why", *args, "nope")[0] == 1
    assert cli("reset", *args, "nightly")[0] == 0
    assert cli("reset", *args, "nope")[0] == 1
    code, out, _ = cli("pause", *args, "--all")
    assert code == 0 and "nightly" in out and "hello" in out
    assert cli("resume", *args, "--all")[0] == 0


def test_why_says_when_the_job_will_not_fire(tmp_path: Path, jobs: Path) -> None:
    write(jobs / "off.yaml", """
        enabled: false
        schedule: every 1h
        steps:
          - {id: s, run: "true"}
    """)
    args = state_args(tmp_path, jobs)
    out = cli("why", *args, "off")[1].splitlines()
    assert out[-1].startswith("will not fire: enabled: false in ") and "off.yaml" in out[-1]
    assert cli("why", *args, "hello")[1].splitlines()[-1].startswith(
        "will not fire on its own")


def test_backfill_runs_each_instant_once_in_the_foreground(tmp_path: Path) -> None:
    jobs = write(tmp_path / "jobs.d" / "daily.yaml", """
        schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
        steps:
          - {id: s, run: 'echo "fire=$PIPELINE_FIRE_TIME" >> "$PIPELINE_OUTPUT"'}
    """).parent
    args = ["--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state")]
    code, out, err = cli("backfill", *args, "daily", "--from", "2026-11-01",
                         "--to", "2026-11-03T23:00", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == ["2026-11-01 03:00:00+01:00  run", "2026-11-02 03:00:00+01:00  run",
                                "2026-11-03 03:00:00+01:00  run"]
    assert not (tmp_path / "state").exists()  # a dry run writes nothing
    code, out, err = cli("backfill", *args, "daily", "--from", "2026-11-01",
                         "--to", "2026-11-03T23:00", "--max-parallel", "2")
    assert code == 0, err
    made = out.split()
    assert len(made) == 3 and "running 3 run(s) here" in err
    runs = json.loads(cli("runs", *args, "daily", "--json")[1])
    assert sorted(r["fire_time"] for r in runs) == [
        "2026-11-01T02:00:00+00:00", "2026-11-02T02:00:00+00:00", "2026-11-03T02:00:00+00:00"]
    assert {(r["trigger"], r["status"]) for r in runs} == {("backfill", "succeeded")}
    shown = json.loads(cli("show", *args, made[0], "--json")[1])
    assert shown["steps"][0]["outputs"]["fire"] == "2026-11-01T02:00:00+00:00"
    # Again: every instant has its run; only --rerun runs them again.
    code, out, err = cli("backfill", *args, "daily", "--from", "2026-11-01",
                         "--to", "2026-11-03T23:00")
    assert code == 0 and out == "" and err.count("left alone") == 3
    code, out, err = cli("backfill", *args, "daily", "--from", "2026-11-02",
                         "--to", "2026-11-02T23:00", "--rerun", "all")
    assert code == 0 and len(out.split()) == 1
    assert len(json.loads(cli("runs", *args, "daily", "--json")[1])) == 4
    code, _, err = cli("backfill", *args, "daily", "--from", "2026-11-03", "--to", "2026-11-01")
    assert code == 1 and "before --from" in err


def test_runs_and_show_mark_a_late_run(tmp_path: Path) -> None:
    from pipeline.store.sqlite import SqliteStore

    jobs = write(tmp_path / "jobs.d" / "daily.yaml", """
        schedule: {cron: "0 3 * * *", timezone: UTC}
        deadline: 1m
        steps:
          - {id: s, run: "true"}
    """).parent
    args = ["--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state")]
    code, out, err = cli("backfill", *args, "daily", "--from", "2026-11-01",
                         "--to", "2026-11-02T23:00")
    assert code == 0, err
    late_id, on_time_id = out.split()
    # Judged as the daemon's deadline loop judges a fire: in the store, which marks the run.
    store = SqliteStore.open(tmp_path / "state")
    try:
        fire = datetime.fromisoformat("2026-11-01T03:00:00+00:00")
        assert store.miss_deadline("daily", fire, deadline=fire, node=None)[0]
    finally:
        store.close()
    lines = {line.split()[0]: line for line in cli("runs", *args)[1].splitlines()[1:]}
    assert "succeeded, late" in lines[late_id]
    assert "late" not in lines[on_time_id] and "succeeded" in lines[on_time_id]
    shown = cli("show", *args, late_id)[1].splitlines()
    assert "status   succeeded; late: it had not succeeded by its deadline" in shown, shown
    assert "status   succeeded" in cli("show", *args, on_time_id)[1].splitlines()


def test_rerun_from_a_step_reuses_the_others_and_failed_reruns_the_failures(
        tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    jobs = write(tmp_path / "jobs.d" / "etl.yaml", f"""
        params: {{day: {{type: string, default: x}}}}
        steps:
          - {{id: extract, run: 'echo "rows=42" >> "$PIPELINE_OUTPUT"'}}
          - id: load
            needs: [extract]
            run: >-
              test -e {flag} &&
              echo "got ${{{{ steps.extract.outputs.rows }}}} ${{{{ params.day }}}}"
          - {{id: report, needs: [load], run: 'true'}}
    """).parent
    args = ["--jobs-dir", str(jobs), "--state-dir", str(tmp_path / "state")]
    assert cli("run", *args, "etl", "-p", "day=mon")[0] == 1  # load fails: no flag
    [first] = json.loads(cli("runs", *args, "--json")[1])
    flag.touch()
    code, out, err = cli("rerun", *args, first["id"], "--failed")
    assert code == 0, err
    again = json.loads(cli("show", *args, out.strip(), "--json")[1])
    assert again["trigger"] == "rerun" and again["rerun_of"] == first["id"]
    assert again["params"] == {"day": "mon"} and again["fire_time"] == first["fire_time"]
    assert [(s["id"], s["status"]) for s in again["steps"]] == [
        ("extract", "reused"), ("load", "succeeded"), ("report", "succeeded")]
    assert again["steps"][0]["outputs"] == {"rows": "42"}
    log = cli("logs", *args, again["id"], "load")[1]
    assert log.strip() == "got 42 mon"
    code, out, _ = cli("rerun", *args, again["id"], "--from", "report")
    assert code == 0
    third = json.loads(cli("show", *args, out.strip(), "--json")[1])
    assert [s["status"] for s in third["steps"]] == ["reused", "reused", "succeeded"]
    assert cli("rerun", *args, again["id"], "--failed")[0] == 1  # nothing failed
    assert cli("rerun", *args, again["id"], "--from", "nope")[0] == 1
    # show says what a rerun runs again, and when the file changed since the original ran.
    shown = cli("show", *args, again["id"])[1].splitlines()
    assert f"rerun of {first['id']}" in shown and not any("differs" in x for x in shown)
    etl = jobs / "etl.yaml"
    etl.write_text(etl.read_text().replace("run: 'true'", "run: 'true '"))
    code, out, err = cli("rerun", *args, again["id"], "--from", "report")
    assert code == 0 and f"changed since run {again['id']}" in err
    shown = cli("show", *args, out.strip())[1].splitlines()
    assert f"rerun of {again['id']}" in shown
    [version] = [x for x in shown if x.startswith("version")]
    assert version.endswith(f"; not the version run {again['id']} ran (sha256:"
                            f"{again['version']['sha256'][:16]}): the job file changed"), version


def test_a_directory_given_before_the_command_beats_the_environment(
        tmp_path: Path, jobs: Path) -> None:
    # The options are on the group and on each command: the command's own copy, given
    # nothing, must not put the environment's value over what the command line said (a
    # systemd drop-in `ExecStart=pipeline --jobs-dir /srv/jobs serve` under the unit's
    # Environment=PIPELINE_JOBS_DIR=...).
    other = write(tmp_path / "other" / "elsewhere.yaml", "steps: [{id: s, run: 'true'}]\n")
    env = {"PIPELINE_JOBS_DIR": str(other.parent),
           "PIPELINE_STATE_DIR": str(tmp_path / "env-state")}
    for args in (["--jobs-dir", str(jobs), "list", "--json"],
                 ["list", "--jobs-dir", str(jobs), "--json"]):
        code, out, err = cli(*args, env=env)
        assert code == 0, err
        assert sorted(j["name"] for j in json.loads(out)) == ["fails", "hello"], args
    code, out, err = cli("list", "--json", env=env)  # the environment, when nothing is given
    assert [j["name"] for j in json.loads(out)] == ["elsewhere"]
    state = tmp_path / "cli-state"
    code, _, err = cli("--state-dir", str(state), "--jobs-dir", str(jobs), "run", "hello",
                       env=env)
    assert code == 0, err
    assert (state / "state.db").exists() and not (tmp_path / "env-state").exists()


def test_the_file_that_held_a_job_name_keeps_it_in_every_command(tmp_path: Path,
                                                                  jobs: Path) -> None:
    from pipeline.store.sqlite import SqliteStore
    from pipeline.watch import Catalog

    args = state_args(tmp_path, jobs)
    child = write(jobs / "child.yaml", """
        name: child
        schedule: every 1h
        steps:
          - {id: hi, run: echo hi}
    """)
    # A daemon loaded it: the state remembers which file holds the name.
    daemon = Catalog(jobs, store=SqliteStore.open(tmp_path / "state"))
    daemon.scan()
    impostor = write(jobs / "a-impostor.yaml", """
        name: child
        steps:
          - {id: evil, run: echo evil}
    """)  # sorts before child.yaml: path order must not decide
    assert daemon.scan() and daemon.files[str(child)] == "child"

    rows = {r["file"]: r for r in json.loads(cli("list", *args, "--json")[1])}
    assert rows[str(child)]["valid"] and rows[str(child)]["name"] == "child"
    [error] = rows[str(impostor)]["errors"]
    assert (error["line"], error["column"]) == (2, 7)
    assert error["message"] == (f"the job name 'child' is already used by {child}, which held "
                                "it first")
    code, out, err = cli("validate", *args)
    assert code == 1 and out.splitlines() == [f"{impostor}:2:7: error: {error['message']}"], err
    assert "hi" in cli("graph", *args, "child")[1]
    # The impostor's error is its own: child.yaml is valid, whatever wants its name.
    assert "invalid" not in cli("why", *args, "child")[1]
    code, out, err = cli("run", *args, "child")
    assert code == 0 and "hi: succeeded" in out and "evil" not in out, out + err
    # With no state (a fresh clone), path order decides, and the message says so.
    code, out, _ = cli("validate", "--jobs-dir", str(jobs), "--state-dir",
                       str(tmp_path / "fresh"))
    assert code == 1 and out.splitlines() == [
        f"{child}:2:7: error: the job name 'child' is already used by {impostor}, the first "
        "file in path order"]


def test_a_broken_file_shows_the_last_good_version_that_keeps_firing(tmp_path: Path,
                                                                     jobs: Path) -> None:
    from pipeline import triggers
    from pipeline.store.sqlite import SqliteStore
    from pipeline.watch import Catalog

    args = state_args(tmp_path, jobs)
    path = write(jobs / "st.yaml", """
        schedule: {cron: "0 3 * * *", timezone: UTC}
        steps:
          - {id: s, run: "true"}
    """)
    Catalog(jobs, store=SqliteStore.open(tmp_path / "state")).scan()  # a daemon loaded it
    path.write_text("schedule: {cron: '0 3 * * *'}\nsteps: [oops\n")  # no longer parses
    # What a daemon (started again) runs of it, and so what the API shows.
    daemon = Catalog(jobs, store=SqliteStore.open(tmp_path / "state"))
    daemon.scan()
    assert daemon.stale == {"st": str(path)}
    fire = triggers.next_fires(daemon.jobs["st"].schedules, datetime.now().astimezone(), 1)[0]

    lines = cli("why", *args, "st")[1].splitlines()
    assert lines[-1].startswith(f"next {fire.isoformat(sep=' ')}: cron"), lines
    assert "its file is invalid" in lines[-1] and "the last good version fires" in lines[-1]
    [row] = [r for r in json.loads(cli("list", *args, "--json")[1]) if r["file"] == str(path)]
    assert (row["name"], row["valid"], row["stale"]) == ("st", False, True)
    assert row["next_fire_time"] == fire.isoformat() and row["schedule"]
    assert row["version"] == daemon.jobs["st"].sha256
    [line] = [line for line in cli("list", *args)[1].splitlines() if line.startswith("st ")]
    assert "last good version runs" in line and fire.strftime("%Y-%m-%d 03:00") in line


def test_resume_catches_up_the_last_good_version_of_a_broken_file(tmp_path: Path,
                                                                  jobs: Path) -> None:
    from pipeline.model import utc_now
    from pipeline.store.records import Outcome, StoredDecision
    from pipeline.store.sqlite import SqliteStore
    from pipeline.watch import Catalog

    args = state_args(tmp_path, jobs)
    path = write(jobs / "st.yaml", """
        schedule: {every: 1h, catchup: latest}
        steps:
          - {id: s, run: "true"}
    """)
    store = SqliteStore.open(tmp_path / "state")
    Catalog(jobs, store=store).scan()  # a daemon loaded it
    assert cli("pause", *args, "st")[0] == 0
    path.write_text("steps: [oops\n")  # broken while paused: its last good version still fires
    store.record_decisions([StoredDecision("st", Outcome.NOT_MADE, utc_now(), utc_now(),
                                           reason="paused")])
    code, out, err = cli("resume", *args, "st", "--catchup")
    assert code == 0 and out.startswith("resumed st; caught up: "), out + err


def test_why_at_shows_the_decisions_nearest_the_moment(tmp_path: Path, jobs: Path) -> None:
    from datetime import UTC, timedelta

    from pipeline.store.records import Outcome, StoredDecision
    from pipeline.store.sqlite import SqliteStore

    args = state_args(tmp_path, jobs)
    at = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
    # Every 7 minutes over two days either side, and a few at the edges of the window.
    fires = [at + timedelta(minutes=7 * k + 3) for k in range(-400, 400)]
    store = SqliteStore.open(tmp_path / "state")
    store.record_decisions([StoredDecision("hello", Outcome.NOT_MADE, fire, fire,
                                           reason="paused") for fire in fires])

    def shown(*extra: str) -> list[str]:
        code, out, err = cli("why", *args, "hello", "--json", *extra)
        assert code == 0, err
        return sorted(d["fire_time"] for d in json.loads(out)["decisions"])

    for count in (1, 2, 5, 40):
        nearest = sorted(fires, key=lambda f: abs(f - at))[:count]
        assert shown("--at", at.isoformat(), "-n", str(count)) == sorted(
            f.isoformat() for f in nearest), count
    # Within --since/--until too: the nearest inside them.
    inside = [f for f in fires if f <= at - timedelta(hours=1)]
    assert shown("--at", at.isoformat(), "-n", "3", "--until",
                 (at - timedelta(hours=1)).isoformat()) == sorted(
        f.isoformat() for f in sorted(inside, key=lambda f: abs(f - at))[:3])
    # Many decisions at one instant: as many as asked for.
    store.record_decisions([StoredDecision("hello", Outcome.SKIPPED, at, at + timedelta(
        seconds=1), reason="overlap")] * 30)
    assert shown("--at", at.isoformat(), "-n", "4") == [
        (at + timedelta(seconds=1)).isoformat()] * 4

"""`pipeline serve` as a real process: the watched directory, crashes, signals, the lock."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import process

pytestmark = pytest.mark.slow

TICK = """
    schedule: every 1s
    steps:
      - {id: t, run: "echo tick %s"}
"""


class Daemon:
    def __init__(self, tmp_path: Path) -> None:
        self.jobs = tmp_path / "jobs.d"
        self.state = tmp_path / "state"
        self.jobs.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "daemon.log"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipeline", *args, "--jobs-dir", str(self.jobs),
                "--state-dir", str(self.state)]

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command("serve", "--no-http", *extra),
                                         stdout=log, stderr=log)
        wait_for(lambda: (self.state / "daemon.json").exists(), what="daemon start")
        return self.proc

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def cli(self, *args: str) -> Any:
        done = subprocess.run(self.command(*args, "--json"), capture_output=True, check=True)
        return json.loads(done.stdout)

    def runs(self, job: str | None = None) -> list[dict[str, Any]]:
        return list(reversed(self.cli("runs", *([job] if job else []), "--limit", "1000")))

    def write(self, name: str, text: str, *, atomic: bool = True) -> Path:
        path = self.jobs / name
        if atomic:  # as editors save: a temp file renamed over the old one
            tmp = self.jobs / f".{name}.swp"
            tmp.write_text(textwrap.dedent(text))
            tmp.replace(path)
        else:
            path.write_text(textwrap.dedent(text))
        return path


def wait_for(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_watched_directory_add_break_fix_remove(daemon: Daemon) -> None:
    daemon.write("a.yaml", TICK % "a1")
    daemon.start()
    wait_for(lambda: len(daemon.runs("a")) >= 2, what="a fires")
    # A new file is picked up within about a second.
    added = time.monotonic()
    daemon.write("b.yaml", TICK % "b1")
    wait_for(lambda: daemon.runs("b"), what="b fires")
    assert time.monotonic() - added < 3
    # Editor leftovers are ignored.
    (daemon.jobs / "b.yaml~").write_text("garbage: [")
    (daemon.jobs / "#b.yaml#").write_text("garbage: [")
    # A broken edit: the last good version keeps firing; the error is shown, located.
    good_sha = daemon.runs("b")[-1]["version"]["sha256"]
    daemon.write("b.yaml", "schedule: every 1s\nsteps:\n  - {id: t, run: 'x', nope: 1}\n")
    def invalid() -> Any:
        rows = {r["file"].rsplit("/", 1)[-1]: r for r in daemon.cli("list")}
        return rows.get("b.yaml") if rows.get("b.yaml", {}).get("valid") is False else None
    row = wait_for(invalid, what="b shown invalid")
    assert row["errors"][0]["line"] == 3
    assert row["daemon"] == "running last good version"
    count = len(daemon.runs("b"))
    wait_for(lambda: len(daemon.runs("b")) >= count + 2, what="b keeps firing")
    assert daemon.runs("b")[-1]["version"]["sha256"] == good_sha
    # Fixed with an atomic save: the new version runs.
    daemon.write("b.yaml", TICK % "b2")
    wait_for(lambda: daemon.runs("b")[-1]["version"]["sha256"] != good_sha, what="b2 runs")
    assert all(r["valid"] for r in daemon.cli("list"))
    # Removed: unscheduled, history kept.
    (daemon.jobs / "b.yaml").unlink()
    time.sleep(1.5)
    count = len(daemon.runs("b"))
    time.sleep(2)
    assert len(daemon.runs("b")) == count > 0
    assert daemon.stop() == 0
    runs = daemon.runs("a")
    fires = [r["fire_time"] for r in runs if r["fire_time"]]
    assert len(fires) == len(set(fires)), "a fire ran twice"


def test_symlink_swap_is_followed(daemon: Daemon, tmp_path: Path) -> None:
    v1 = tmp_path / "v1.yaml"
    v2 = tmp_path / "v2.yaml"
    v1.write_text(textwrap.dedent(TICK % "one"))
    v2.write_text(textwrap.dedent(TICK % "two"))
    (daemon.jobs / "s.yaml").symlink_to(v1)
    daemon.start()
    first = wait_for(lambda: daemon.runs("s"), what="s fires")[-1]["version"]["sha256"]
    tmp_link = daemon.jobs / ".s.tmp"
    tmp_link.symlink_to(v2)
    tmp_link.replace(daemon.jobs / "s.yaml")
    wait_for(lambda: daemon.runs("s")[-1]["version"]["sha256"] != first, what="v2 runs")


def test_kill_9_mid_step_then_restart(daemon: Daemon) -> None:
    daemon.write("slow.yaml", """
        schedule: every 1s
        steps:
          - {id: s, run: "echo started; sleep 300 & sleep 300"}
    """)
    daemon.write("tick.yaml", TICK % "t")
    proc = daemon.start()
    running = wait_for(lambda: [r for r in daemon.runs("slow") if r["status"] == "running"],
                       what="slow runs")
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert process.processes_of_run(running[0]["id"])  # orphans exist until the restart
    daemon.start("--grace", "0.5s")
    wait_for(lambda: not process.processes_of_run(running[0]["id"]), what="orphans killed")
    run = next(r for r in daemon.runs("slow") if r["id"] == running[0]["id"])
    assert run["status"] == "interrupted"
    before = len(daemon.runs("tick"))
    wait_for(lambda: len(daemon.runs("tick")) >= before + 2, what="fires continue")
    assert daemon.stop() == 0
    for job in ("tick", "slow"):
        fires = [r["fire_time"] for r in daemon.runs(job) if r["fire_time"]]
        assert len(fires) == len(set(fires)), f"a fire of {job} ran twice"
    db = sqlite3.connect(daemon.state / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sigterm_gives_active_runs_their_grace_then_interrupts(daemon: Daemon) -> None:
    daemon.write("long.yaml", """
        steps:
          - {id: s, run: "sleep 300"}
        schedule: every 1s
    """)
    proc = daemon.start("--grace", "1s")
    run = wait_for(lambda: [r for r in daemon.runs("long") if r["status"] == "running"],
                   what="long runs")[0]
    t0 = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 0
    final = next(r for r in daemon.runs("long") if r["id"] == run["id"])
    assert final["status"] == "interrupted"  # the daemon stopped while it ran (contract §6)
    assert not process.processes_of_run(run["id"])


def test_second_daemon_refuses_with_a_clear_message(daemon: Daemon) -> None:
    daemon.write("a.yaml", TICK % "a")
    daemon.start()
    second = subprocess.run(daemon.command("serve", "--no-http"), capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 1
    assert daemon.proc is not None
    assert f"another pipeline daemon (pid {daemon.proc.pid})" in second.stderr
    assert daemon.stop() == 0


def test_list_and_next_work_without_a_daemon(daemon: Daemon) -> None:
    daemon.write("nightly.yaml", """
        schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
        steps:
          - {id: s, run: "true"}
    """)
    done = subprocess.run(daemon.command("next", "nightly", "-n", "3",
                                         "--after", "2026-03-28T00:00:00+01:00"),
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00",
                                   "2026-03-30T02:30:00+02:00"]
    listed = subprocess.run(daemon.command("list", "--json"), capture_output=True, text=True,
                            check=True)
    rows = json.loads(listed.stdout)
    assert rows[0]["name"] == "nightly" and rows[0]["next_fire_time"]
    unknown = subprocess.run(daemon.command("next", "nope"), capture_output=True, text=True)
    assert unknown.returncode == 1


def test_retention_prunes_old_runs_and_their_logs(tmp_path: Path) -> None:
    """`history` per job (and the defaults for jobs without one), applied by the daemon."""
    from datetime import UTC, datetime, timedelta

    from pipeline import spec
    from pipeline.daemon import prune
    from pipeline.events import RunFinished, RunQueued, RunStarted
    from pipeline.model import RunStatus, Trigger
    from pipeline.store import SqliteStore

    jobs = tmp_path / "jobs.d"
    jobs.mkdir()
    (jobs / "kept.yaml").write_text("history: {keep_runs: 3}\nsteps:\n  - {id: a, run: 'true'}\n")
    job = spec.load_job(jobs / "kept.yaml")
    state = tmp_path / "state"
    store = SqliteStore.open(state)
    now = datetime(2026, 11, 28, tzinfo=UTC)
    ids = []
    for i in range(6):
        run_id = f"2026112{i}T000000-0000000{i}"
        at = now - timedelta(days=6 - i)
        store.record([RunQueued(run_id, "kept", Trigger.MANUAL, at), RunStarted(run_id, at),
                      RunFinished(run_id, RunStatus.SUCCEEDED, at)])
        (state / "logs" / "kept" / run_id).mkdir(parents=True)
        (state / "logs" / "kept" / run_id / "a.log").write_text("x")
        ids.append(run_id)
    assert prune(store, state, {"kept": job}, now) == 3
    left = [r.id for r in store.runs(job="kept")]
    assert sorted(left) == ids[3:]
    assert sorted(p.name for p in (state / "logs" / "kept").iterdir()) == ids[3:]
    store.close()


def test_list_names_the_job_of_a_file_that_no_longer_parses(daemon: Daemon) -> None:
    daemon.write("b.yaml", """
        schedule: every 1s
        circuit_breaker: {after: 3, cooldown: 1h}
        steps:
          - {id: t, run: "echo tick"}
    """)
    daemon.start()
    good = wait_for(lambda: daemon.runs("b"), what="b fires")[-1]["version"]["sha256"]
    daemon.write("b.yaml", "schedule: every 1s\nsteps: [\n")  # not even YAML
    row = wait_for(lambda: next((r for r in daemon.cli("list") if not r["valid"]), None),
                   what="b shown invalid")
    assert row["name"] == "b" and row["stale"] is True
    assert row["daemon"] == "running last good version"
    assert row["version"] == good and row["schedule"] == "every 1s"
    assert row["circuit"] == "closed" and row["last_run"]["job"] == "b"
    text = subprocess.run(daemon.command("list"), capture_output=True, text=True, check=True)
    line = next(line for line in text.stdout.splitlines() if line.endswith("b.yaml"))
    assert line.startswith("b ") and "INVALID (1), last good version runs" in line
    assert daemon.stop() == 0


def test_serve_reads_its_token_from_a_file_and_binds_before_anything(
        daemon: Daemon, tmp_path: Path) -> None:
    import httpx

    daemon.write("a.yaml", "steps:\n  - {id: a, run: 'true'}\n")
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-a-file\n")
    with daemon.log.open("ab") as log:
        daemon.proc = subprocess.Popen(daemon.command("serve", "--listen", "127.0.0.1:0",
                                                      "--token-file", str(token_file)),
                                       stdout=log, stderr=log)
    info = wait_for(lambda: (daemon.state / "daemon.json").exists() and json.loads(
        (daemon.state / "daemon.json").read_text()), what="daemon start")
    url = info["listen"]
    assert b"tok-from-a-file" not in (daemon.state / "daemon.json").read_bytes()
    assert httpx.get(f"{url}/api/v1/jobs").status_code == 401
    assert httpx.get(f"{url}/api/v1/jobs", headers={
        "Authorization": "Bearer tok-from-a-file"}).status_code == 200

    def pipeline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(daemon.command(*args), capture_output=True, text=True, timeout=30)

    triggered = pipeline("trigger", "a", "--wait", "--token-file", str(token_file))
    assert triggered.returncode == 0, triggered.stderr
    refused = pipeline("trigger", "a")
    assert refused.returncode == 1 and "--token-file" in refused.stderr
    both = pipeline("trigger", "a", "--token", "x", "--token-file", str(token_file))
    assert both.returncode == 2 and "not both" in both.stderr
    # The same address again: the state directory's daemon is named, in one line.
    port = url.rsplit(":", 1)[1]
    second = pipeline("serve", "--listen", f"127.0.0.1:{port}")
    assert second.returncode == 1
    assert second.stderr == (f"pipeline: another pipeline daemon (pid {daemon.proc.pid}) is "
                             f"using the state directory {daemon.state}\n")
    elsewhere = tmp_path / "other-state"
    third = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--listen",
                            f"127.0.0.1:{port}", "--jobs-dir", str(daemon.jobs),
                            "--state-dir", str(elsewhere)], capture_output=True, text=True,
                           timeout=30)
    assert third.returncode == 1 and not elsewhere.exists()
    assert third.stderr == f"pipeline: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert daemon.stop() == 0

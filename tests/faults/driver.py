"""A real ``pipeline serve --no-http`` process that a test starts, crashes, kills and restarts.

Every job the driver writes carries ``PIPELINE_FAULTS_MARK=<mark>`` in its ``env``, so every
step process (and whatever it starts) can be found in /proc and killed when the test ends,
whatever state the daemon left behind. ``close()`` does that; the fixtures call it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

MARK = "PIPELINE_FAULTS_MARK"
DAEMON_FILE = "daemon.json"


def wait_for(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str = "",
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- processes ---------------------------------------------------------------------------------

def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}  # gone, or a zombie (whose environment is empty anyway)
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    return env


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0], int(fields[1])


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def scan_environ(key: str, values: Sequence[str] | None = None) -> dict[int, str]:
    """Live processes whose environment has ``key`` (with one of ``values``): pid -> value."""
    wanted = key.encode()
    found = {}
    me = os.getpid()
    for pid in pids():
        if pid == me:
            continue
        value = _environ(pid).get(wanted)
        if value is None:
            continue
        text = value.decode(errors="replace")
        if values is None or text in values:
            found[pid] = text
    return found


def zombies_of(parent: int) -> list[int]:
    """Zombie children of ``parent`` (nobody reaped them)."""
    found = []
    for pid in pids():
        state = proc_state(pid)
        if state is not None and state[0] == "Z" and state[1] == parent:
            found.append(pid)
    return found


def lasting_zombies(parent: int, *, settle: float = 1.0) -> list[int]:
    """Zombie children of ``parent`` that are still unreaped ``settle`` seconds later (a
    child that has just exited is a zombie until its parent gets round to waiting for it)."""
    first = zombies_of(parent)
    if not first:
        return []
    time.sleep(settle)
    return sorted(set(first) & set(zombies_of(parent)))


def kill_marked(mark: str) -> list[int]:
    """SIGKILL every process carrying ``PIPELINE_FAULTS_MARK=mark``; return their pids."""
    killed = []
    for _ in range(3):  # a dying shell may start one more child: look again
        found = scan_environ(MARK, [mark])
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- the state database, read as any other process would ---------------------------------------

@contextmanager
def open_db(state_dir: Path, *, timeout: float = 10.0) -> Iterator[sqlite3.Connection]:
    """A connection to ``state_dir/state.db`` that never creates it (``FileNotFoundError``)."""
    path = state_dir / "state.db"
    if not path.exists():
        raise FileNotFoundError(path)
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout,
                           isolation_level=None)
    conn.row_factory = sqlite3.Row
    with closing(conn):
        yield conn


def query(state_dir: Path, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
    try:
        with open_db(state_dir) as conn:
            return [dict(row) for row in conn.execute(sql, args).fetchall()]
    except FileNotFoundError:
        return []


def parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# -- the daemon --------------------------------------------------------------------------------

@dataclass
class Life:
    """One start of the daemon, from spawn to exit."""

    proc: subprocess.Popen[bytes]
    log: Path
    crash_at: str | None
    spawned_at: datetime
    ready_at: datetime | None = None  # when it wrote daemon.json: its jobs were loaded
    ended_at: datetime | None = None
    returncode: int | None = None
    how: str = ""  # "crash", "kill", "term": how the test ended it (or it ended itself)
    url: str | None = None  # of its HTTP endpoint, when it serves one

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []


@dataclass
class Driver:
    """Jobs, a state directory and the successive lives of one daemon on them."""

    root: Path
    state: Path | None = None
    grace: str = "0.5s"
    mark: str = field(default_factory=lambda: f"faults-{secrets.token_hex(6)}")
    lives: list[Life] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.jobs = self.root / "jobs.d"
        self.jobs.mkdir(parents=True, exist_ok=True)
        if self.state is None:
            self.state = self.root / "state"

    @property
    def state_dir(self) -> Path:
        assert self.state is not None
        return self.state

    # -- jobs ------------------------------------------------------------------------------

    def job(self, name: str, document: Mapping[str, Any]) -> Path:
        """Write ``jobs.d/NAME.yaml`` (atomically) with the driver's mark in its ``env``."""
        doc = dict(document)
        doc["env"] = {**dict(doc.get("env", {})), MARK: self.mark}
        path = self.jobs / f"{name}.yaml"
        tmp = self.jobs / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(path)
        return path

    # -- the process -----------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipeline", *args, "--jobs-dir", str(self.jobs),
                "--state-dir", str(self.state_dir)]

    @property
    def life(self) -> Life | None:
        return self.lives[-1] if self.lives else None

    @property
    def running(self) -> bool:
        return self.life is not None and self.life.proc.poll() is None

    def start(self, *, crash_at: str | None = None, args: Sequence[str] = (),
              wait: bool = True, timeout: float = 30.0, http: bool = False,
              environ: Mapping[str, str] | None = None) -> Life:
        """Start ``pipeline serve --no-http`` (with ``http``: on 127.0.0.1, a free port); with
        ``wait``, return once it is serving (or has already exited, as a daemon crashing at an
        early point does)."""
        assert not self.running, "the previous daemon is still running"
        env = dict(os.environ if environ is None else environ)
        env.pop("PIPELINE_CRASH_AT", None)
        if crash_at:
            env["PIPELINE_CRASH_AT"] = crash_at
        index = len(self.lives)
        log = self.root / f"daemon.{index}.log"
        # A daemon killed with -9 leaves its daemon.json: never take it for the new one's.
        (self.state_dir / DAEMON_FILE).unlink(missing_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.command("serve", *(("--listen", "127.0.0.1:0") if http else ("--no-http",)),
                             "--grace", self.grace, "--log-level", "INFO", *args),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        life = Life(proc, log, crash_at, utc_now())
        self.lives.append(life)
        if wait:
            self.wait_ready(timeout=timeout)
        return life

    def _ready(self, life: Life) -> bool:
        path = self.state_dir / DAEMON_FILE
        try:
            info = json.loads(path.read_text())
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            return False
        if info.get("pid") != life.pid:
            return False
        life.ready_at = datetime.fromtimestamp(mtime, UTC)
        life.url = info.get("listen")
        return True

    def wait_ready(self, *, timeout: float = 30.0) -> bool:
        """True once the current life serves; False if it exited first."""
        life = self.life
        assert life is not None

        def settled() -> bool:
            if life.ready_at is not None or self._ready(life):
                return True
            if life.proc.poll() is not None:
                self._ended(life, "")
                return True
            return False

        wait_for(settled, timeout=timeout, what=f"daemon {life.pid} to serve")
        return life.ready_at is not None

    def _ended(self, life: Life, how: str) -> None:
        if life.ended_at is None:
            life.ended_at = utc_now()
            life.returncode = life.proc.returncode
            life.how = how or ("crash" if life.returncode == 70 else f"exit {life.returncode}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        life = self.life
        assert life is not None
        code = life.proc.wait(timeout)
        self._ended(life, "")
        return code

    def kill(self) -> Life:
        """kill -9 the daemon (its steps are orphaned, as in a real crash)."""
        life = self.life
        assert life is not None
        if life.proc.poll() is None:
            life.proc.send_signal(signal.SIGKILL)
        life.proc.wait()
        self._ended(life, "kill")
        return life

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the clean exit; returns the exit status."""
        life = self.life
        assert life is not None
        if life.proc.poll() is None:
            life.proc.send_signal(signal.SIGTERM)
        code = life.proc.wait(timeout)
        self._ended(life, "term")
        return code

    def close(self) -> list[int]:
        """End everything this driver started: the daemon, then every marked process."""
        for life in self.lives:
            if life.proc.poll() is None:
                life.proc.kill()
                life.proc.wait()
                self._ended(life, "kill")
        return kill_marked(self.mark)

    # -- what it recorded --------------------------------------------------------------------

    def runs(self, job: str | None = None) -> list[dict[str, Any]]:
        if job is None:
            return query(self.state_dir, "SELECT * FROM runs ORDER BY queued_at, id")
        return query(self.state_dir, "SELECT * FROM runs WHERE job = ? ORDER BY queued_at, id",
                     (job,))

    def fires_after(self, job: str, after: datetime, *, finished: bool = True,
                    ) -> list[dict[str, Any]]:
        """Runs of ``job`` for fires after ``after`` (finished ones only, by default)."""
        rows = [r for r in self.runs(job) if r["fire_key"]
                and parse_time(r["fire_key"]) > after]  # type: ignore[operator]
        if finished:
            rows = [r for r in rows if r["status"] not in ("queued", "running")]
        return rows

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def log_lines(self, needle: str, life: Life | None = None) -> list[str]:
        lives = [life] if life is not None else self.lives
        return [line for lf in lives for line in lf.lines() if needle in line]

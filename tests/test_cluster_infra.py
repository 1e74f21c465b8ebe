"""What the cluster harness of issue 11 relies on, proven on this machine.

The test PostgreSQL (tests/postgres.py), network namespaces whose link is cut and restored
(tests/faults/netns.py), libpq's dead-peer settings, SIGSTOP of a process holding row locks,
``pg_ctl restart`` under a psycopg connection or pool, ``faketime``, the advisory lock for
migrations, and where a URL's password leaks. tests/faults/CLUSTER-HARNESS.md has the figures
and what follows from each.

Namespace tests need root and ``ip``; faketime tests need ``faketime``. Without them they skip
with the reason, except under ``CI=true`` where they fail (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.faults import netns
from tests.postgres import DIR_PREFIX, Postgres, in_ci, reap_stale

pytestmark = pytest.mark.slow  # every test starts or uses a PostgreSQL server

ROOT = Path(__file__).resolve().parent.parent

# The dead-peer settings CLUSTER-HARNESS.md recommends, scaled down for tests: keepalives notice
# a silent peer while we wait for a reply; tcp_user_timeout bounds unacknowledged sends (and,
# on Linux, overrides keepalives_count once set).
DEAD_PEER = ("connect_timeout=2&keepalives=1&keepalives_idle=1&keepalives_interval=1"
             "&keepalives_count=2&tcp_user_timeout=2000")


def require(reason: str | None) -> None:
    if reason:
        if in_ci():
            pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
        pytest.skip(reason)


def require_netns(postgres: Postgres) -> None:
    if postgres.data_dir is None:
        pytest.skip("an outside server (PIPELINE_TEST_POSTGRES) need not listen where a "
                    "namespace can reach it")
    require(netns.unavailable())


def with_params(url: str, params: str) -> str:
    return url + ("&" if "?" in url else "?") + params if params else url


class Child:
    """A Python child that reports in JSON lines; read with a timeout, killed on close."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []  # everything printed, for failure messages
        self.last_at = 0.0  # when the last report arrived (time.monotonic())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line))

    def report(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line, or None if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            self.seen.append(line)
            if line.startswith("{"):
                self.last_at = at
                return json.loads(line)  # type: ignore[no-any-return]

    def expect(self, timeout: float = 10) -> dict[str, Any]:
        got = self.report(timeout)
        assert got is not None, f"no report within {timeout}s; printed: {''.join(self.seen)}"
        return got

    def send(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        child.close()


def spawn(made: list[Child], script: str, *args: str, prefix: list[str] | None = None) -> Child:
    child = Child([*(prefix or []), sys.executable, "-c", textwrap.dedent(script), *args])
    made.append(child)
    return child


# -- the test PostgreSQL -----------------------------------------------------------------------

def test_postgres_gives_each_test_a_fresh_database_with_test_settings(
        postgres: Postgres, postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (["fsync", "synchronous_commit", "full_page_writes", "max_connections",
              "listen_addresses", "server_version_num"],)).fetchall())
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE mine (x int)")
    if postgres.data_dir is not None:  # an outside server has its own settings
        assert settings["fsync"] == "off"
        assert settings["synchronous_commit"] == "off"
        assert settings["full_page_writes"] == "off"
        assert int(settings["max_connections"]) >= 200
        assert settings["listen_addresses"] == "0.0.0.0"
    assert int(settings["server_version_num"]) >= 150000
    other = postgres.database()
    try:
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    finally:
        postgres.drop(other)


@pytest.mark.slow
def test_postgres_restart_stop_and_start(postgres: Postgres, postgres_url: str) -> None:
    before = postgres.pid()
    postgres.restart()
    assert postgres.pid() != before
    postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url, connect_timeout=2)
    postgres.start()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


INNER_TEST = """
    import os, time
    def test_hold(postgres):
        with open(os.environ["WHERE"], "w") as f:
            f.write(f"{postgres.data_dir} {postgres.pid()}")
        time.sleep(60)
"""


def inner_session(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    """A pytest session holding the postgres fixture: (process, data dir, postmaster pid)."""
    tmp_path.mkdir()
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    where = tmp_path / "where"
    env = {**os.environ, "WHERE": str(where), "PYTHONPATH": str(ROOT),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # seconds saved: only tests.postgres is needed
    env.pop("PIPELINE_TEST_POSTGRES", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.postgres", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (where.exists() and where.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "inner session never started"
        time.sleep(0.05)
    data, pid = where.read_text().split()
    return proc, Path(data), int(pid)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and " Z " in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.slow
def test_postgres_is_stopped_after_ctrl_c_and_reaped_after_kill_9(
        postgres: Postgres, tmp_path: Path) -> None:
    if postgres.data_dir is None:
        pytest.skip("an outside server: the fixture starts none")
    proc, data, pid = inner_session(tmp_path / "int")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert gone(pid), "Ctrl-C left the test PostgreSQL running"
    assert not data.parent.exists()

    proc, data, pid = inner_session(tmp_path / "kill")
    proc.kill()
    proc.wait()
    assert not gone(pid) and data.exists()  # nobody cleaned up: the next session must
    assert postgres.bin_dir is not None
    reap_stale(postgres.bin_dir, postgres.run_as)
    deadline = time.monotonic() + 10
    while not gone(pid):
        assert time.monotonic() < deadline, "the stale server is still running"
        time.sleep(0.05)
    assert not data.parent.exists()
    assert data.parent.name.startswith(DIR_PREFIX)


# -- network namespaces --------------------------------------------------------------------------

CONNECT_AND_WAIT = """
    import json, sys, time, psycopg
    url, statement, mode = sys.argv[1:4]
    def report(**fields):
        print(json.dumps(fields), flush=True)
    conn = None if mode == "connect" else psycopg.connect(url, autocommit=True)
    report(ready=True)
    sys.stdin.readline()
    started = time.monotonic()
    try:
        if conn is None:
            conn = psycopg.connect(url, autocommit=True)
        conn.execute(statement)
        report(ok=True)
    except psycopg.Error as exc:
        report(error=type(exc).__name__, message=str(exc),
               operational=isinstance(exc, psycopg.OperationalError),
               broken=None if conn is None else conn.broken)
"""


@pytest.mark.slow
def test_namespace_reaches_postgres_and_leaves_nothing_behind(
        postgres: Postgres, children: list[Child], tmp_path: Path) -> None:
    require_netns(postgres)
    with pytest.raises(RuntimeError), netns.open_namespace() as ns:
        child = spawn(children, CONNECT_AND_WAIT, postgres.url("postgres", host=ns.host_address),
                      "SELECT 1", "now", prefix=ns.argv())
        assert child.expect() == {"ready": True}
        child.send()
        assert child.expect() == {"ok": True}
        stuck = subprocess.Popen(ns.argv("sleep", "600"))  # keeps the namespace alive...
        raise RuntimeError("a test fails inside the namespace")
    assert stuck.wait(timeout=5) == -signal.SIGKILL  # ...unless it is killed on the way out
    assert ns.name not in netns.ip("netns", "list").stdout
    assert netns.ip("link", "show", ns.host_dev, check=False).returncode != 0

    # A session killed outright leaves its namespace; the next one removes it.
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal\n"
         "from tests.faults.netns import open_namespace\n"
         "with open_namespace() as ns:\n"
         "    print(ns.name, ns.host_dev, flush=True)\n"
         "    os.kill(os.getpid(), signal.SIGKILL)\n"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    name, host_dev = killed.stdout.split()
    assert name in netns.ip("netns", "list").stdout
    assert name in netns.reap_stale()
    assert name not in netns.ip("netns", "list").stdout
    assert netns.ip("link", "show", host_dev, check=False).returncode != 0


# (label, libpq parameters, statement, mode, seconds within which an error must come or None
# for "still blocked after WAIT").  mode: "after" = cut, then the statement; "during" = the
# statement, then the cut while it waits for the reply; "connect" = cut, then connect.
WAIT = 5.0
CUT_CASES = [
    ("no settings, statement after the cut", "", "SELECT 1", "after", None),
    ("tcp_user_timeout alone, waiting for a reply", "tcp_user_timeout=2000",
     "SELECT pg_sleep(60)", "during", None),
    ("keepalives alone, waiting for a reply",
     "keepalives_idle=1&keepalives_interval=1&keepalives_count=2",
     "SELECT pg_sleep(60)", "during", 4.5),
    ("dead-peer settings, statement after the cut", DEAD_PEER, "SELECT 1", "after", 4.0),
    ("dead-peer settings, waiting for a reply", DEAD_PEER, "SELECT pg_sleep(60)", "during", 4.0),
    ("dead-peer settings, connecting", DEAD_PEER, "SELECT 1", "connect", 4.0),
]


@pytest.mark.slow
def test_a_cut_link_blocks_without_timeouts_and_fails_fast_with_them(
        postgres: Postgres, children: list[Child]) -> None:
    """All cases at once, each in its own namespace, so the test takes WAIT seconds."""
    require_netns(postgres)
    with ExitStack() as stack:
        runs = []
        for label, params, statement, mode, within in CUT_CASES:
            ns = stack.enter_context(netns.open_namespace())
            url = with_params(postgres.url("postgres", host=ns.host_address), params)
            child = spawn(children, CONNECT_AND_WAIT, url, statement, mode, prefix=ns.argv())
            assert child.expect() == {"ready": True}, label
            runs.append((label, mode, within, ns, child))
        cut_at = {}
        for _, mode, _, _, child in runs:
            if mode == "during":
                child.send()
        time.sleep(0.5)  # the statements are on the server
        for label, mode, _, ns, child in runs:
            ns.cut()
            cut_at[label] = time.monotonic()
            if mode != "during":
                child.send()
        seen = {}
        deadline = time.monotonic() + WAIT
        for label, _, _, _, child in runs:
            got = child.report(max(0.0, deadline - time.monotonic()))
            seen[label] = (got, None if got is None else child.last_at - cut_at[label])
        for label, _, within, _, _ in runs:
            got, after = seen[label]
            if within is None:
                assert got is None, f"{label}: expected to stay blocked, got {got}"
            else:
                assert got is not None, f"{label}: still blocked after {WAIT}s"
                assert got.get("operational"), (label, got)
                assert after is not None and after <= within, (label, after)
            print(f"{label}: {'blocked' if got is None else f'{after:.2f}s'} {got or ''}")

        # Restored: a new connection from the namespace works again, possibly not at the first
        # try (the server's backend of a dead connection can still hold the same ports).
        ns = runs[0][3]
        ns.restore()
        url = with_params(postgres.url("postgres", host=ns.host_address), DEAD_PEER)
        started, tries = time.monotonic(), 0
        while True:
            tries += 1
            child = spawn(children, CONNECT_AND_WAIT, url, "SELECT 1", "connect",
                          prefix=ns.argv())
            child.expect()
            child.send()
            if child.expect() == {"ok": True}:
                break
            assert time.monotonic() - started < 15, "no connection after the link came back"
            time.sleep(0.5)
        print(f"reconnected after the restore in {time.monotonic() - started:.2f}s, "
              f"{tries} tries")


LOCK_AND_WAIT = """
    import json, sys, psycopg
    url, options, mode = sys.argv[1:4]
    def report(**fields):
        print(json.dumps(fields), flush=True)
    def attempt(label, run):
        try:
            run()
            report(step=label, ok=True)
        except psycopg.Error as exc:
            report(step=label, error=type(exc).__name__, sqlstate=exc.sqlstate,
                   message=str(exc).strip(), broken=conn.broken)
    conn = psycopg.connect(url, options=options)
    conn.execute("SELECT v FROM t WHERE id = 1 FOR UPDATE")
    report(locked=conn.info.backend_pid)
    if mode == "statement":  # wait on the server, in the transaction
        attempt("sleep", lambda: conn.execute("SELECT pg_sleep(30)"))
    sys.stdin.readline()
    attempt("update", lambda: conn.execute("UPDATE t SET v = v + 100 WHERE id = 1"))
    attempt("commit", conn.commit)
    report(status=conn.info.transaction_status.name, broken=conn.broken)
"""


def one_row(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 0)")


def update_as_another_node(url: str, *, lock_timeout: str = "5s") -> tuple[str, float]:
    """Update the row from a second session: ('ok' or the error's class name, seconds)."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{lock_timeout}'")
        try:
            conn.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            outcome = "ok"
        except psycopg.Error as exc:
            outcome = type(exc).__name__
    return outcome, time.monotonic() - started


def value(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT v FROM t WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.slow
def test_a_partitioned_node_loses_its_row_locks_to_idle_in_transaction_timeout(
        postgres: Postgres, postgres_url: str, children: list[Child]) -> None:
    require_netns(postgres)
    one_row(postgres_url)
    dbname = postgres_url.rsplit("/", 1)[1]
    with netns.open_namespace() as ns:
        url = with_params(postgres.url(dbname, host=ns.host_address), DEAD_PEER)
        child = spawn(children, LOCK_AND_WAIT, url,
                      "-c idle_in_transaction_session_timeout=1000", "idle", prefix=ns.argv())
        assert "locked" in child.expect()
        ns.cut()
        outcome, seconds = update_as_another_node(postgres_url)
        assert outcome == "ok" and 0.5 < seconds < 3, (outcome, seconds)
        ns.restore()
        child.send()
        update = child.expect()
        # The server's FATAL, sent into the cut, may have reached it by now (the class then is
        # IdleInTransactionSessionTimeout, an InternalError!) or not (OperationalError): what
        # tells a lost connection is conn.broken.
        assert update["step"] == "update" and update["broken"], update
        print(f"lock freed {seconds:.2f}s after the cut; the node then saw: {update}")
    assert value(postgres_url) == 1  # the other node's update only


@pytest.mark.slow
def test_a_frozen_node_loses_its_row_locks_only_with_session_timeouts(
        postgres_url: str, children: list[Child]) -> None:
    one_row(postgres_url)

    # Without timeouts, a frozen node's row lock is held as long as it is frozen.
    child = spawn(children, LOCK_AND_WAIT, postgres_url, "", "idle")
    assert "locked" in child.expect()
    os.kill(child.proc.pid, signal.SIGSTOP)
    assert update_as_another_node(postgres_url, lock_timeout="1.5s")[0] == "LockNotAvailable"
    child.close()

    # idle_in_transaction_session_timeout ends the session: its locks go with it, and the
    # woken node's next statement learns why; its connection is gone.
    child = spawn(children, LOCK_AND_WAIT, postgres_url,
                  "-c idle_in_transaction_session_timeout=1000", "idle")
    assert "locked" in child.expect()
    os.kill(child.proc.pid, signal.SIGSTOP)
    outcome, seconds = update_as_another_node(postgres_url)
    assert outcome == "ok" and 0.8 < seconds < 3, (outcome, seconds)
    os.kill(child.proc.pid, signal.SIGCONT)
    child.send()
    update, commit, status = child.expect(), child.expect(), child.expect()
    assert (update["error"], update["sqlstate"]) == ("IdleInTransactionSessionTimeout", "25P03")
    assert update["broken"]  # an InternalError by its SQLSTATE class, yet the connection is gone
    assert commit["error"] == "OperationalError"  # "the connection is closed"
    assert status == {"status": "UNKNOWN", "broken": True}

    # statement_timeout cancels a statement the frozen node is waiting on: the transaction is
    # aborted at once and its locks freed; the woken node reads the cancellation, then every
    # statement fails, and commit() returns quietly: the server answered ROLLBACK.
    child = spawn(children, LOCK_AND_WAIT, postgres_url, "-c statement_timeout=1000",
                  "statement")
    assert "locked" in child.expect()
    time.sleep(0.2)  # its pg_sleep is running
    os.kill(child.proc.pid, signal.SIGSTOP)
    outcome, seconds = update_as_another_node(postgres_url)
    assert outcome == "ok" and seconds < 2.5, (outcome, seconds)
    os.kill(child.proc.pid, signal.SIGCONT)
    child.send()
    sleep, update, commit, status = (child.expect() for _ in range(4))
    assert (sleep["error"], sleep["sqlstate"]) == ("QueryCanceled", "57014")
    assert (update["error"], update["sqlstate"]) == ("InFailedSqlTransaction", "25P02")
    assert not sleep["broken"] and not update["broken"]
    assert commit == {"step": "commit", "ok": True}
    assert status == {"status": "IDLE", "broken": False}
    assert value(postgres_url) == 2  # the other node's two updates, none of the frozen one's


# -- database restart --------------------------------------------------------------------------

@pytest.mark.slow
def test_pg_restart_breaks_idle_connections_and_a_checking_pool_recovers(
        postgres: Postgres, postgres_url: str) -> None:
    def select(pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]]) -> Any:
        with pool.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    with ExitStack() as stack:
        plain = psycopg_pool.ConnectionPool(postgres_url, min_size=2, open=False)
        checked = psycopg_pool.ConnectionPool(
            postgres_url, min_size=2, open=False,
            check=psycopg_pool.ConnectionPool.check_connection)
        for pool in (plain, checked):
            pool.open(wait=True)
            stack.callback(pool.close)
        for mode, error, sqlstate in [("fast", errors.AdminShutdown, "57P01"),
                                      ("immediate", psycopg.OperationalError, None)]:
            conn = stack.enter_context(psycopg.connect(postgres_url, autocommit=True))
            postgres.restart(mode)
            with pytest.raises(psycopg.OperationalError) as caught:
                conn.execute("SELECT 1")
            assert type(caught.value) is error and caught.value.sqlstate == sqlstate
            assert conn.broken and conn.closed
            # No reconnection in a Connection: a new one, once the server is back.
            with psycopg.connect(postgres_url) as again:
                assert again.execute("SELECT 1").fetchone() == (1,)
            # A pool without check hands out each dead connection once (min_size of them);
            # with check, it tests and replaces them (about a second: its retry backoff).
            failures = 0
            while True:
                try:
                    select(plain)
                    break
                except psycopg.OperationalError:
                    failures += 1
                    assert failures <= 2
            assert failures >= 1
            started = time.monotonic()
            assert select(checked) == (1,)
            print(f"{mode}: {type(caught.value).__name__} {str(caught.value).strip()!r}; "
                  f"plain pool failed {failures}x; checked pool "
                  f"{time.monotonic() - started:.2f}s")


# -- faketime --------------------------------------------------------------------------------

CLOCKS = """
    import datetime, json, subprocess, sys, time
    import psycopg, trio
    wall, mono = time.time(), time.monotonic()
    async def sleep():
        start = trio.current_time()
        await trio.sleep(0.3)
        return trio.current_time() - start
    slept = trio.run(sleep)
    with psycopg.connect(sys.argv[1]) as conn:
        db = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        db_minus_local = db - time.time()
    child = float(subprocess.run(["date", "+%s.%N"], capture_output=True, text=True).stdout)
    print(json.dumps({"wall": wall, "monotonic": mono, "now": datetime.datetime.now(
        datetime.UTC).timestamp(), "trio_slept": slept, "db_minus_local": db_minus_local,
        "child_wall": child, "child_minus_local": child - time.time()}))
"""


def clocks(prefix: list[str], url: str, env: dict[str, str] | None = None) -> dict[str, float]:
    done = subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(CLOCKS), url],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize(("skew", "threads"), [(30, False), (-30, True)])
def test_faketime_shifts_the_wall_clock_and_psycopg_and_trio_still_work(
        postgres_url: str, skew: int, threads: bool) -> None:
    require(None if shutil.which("faketime") else "no faketime (install the faketime package)")
    # -m: the multi-threaded libfaketime, for a daemon whose threads read the clock.
    faketime = ["faketime", *(["-m"] if threads else []), "-f", f"{skew:+d}s"]
    real_wall, real_mono = time.time(), time.monotonic()
    got = clocks(faketime, postgres_url)
    assert abs(got["wall"] - real_wall - skew) < 2
    assert abs(got["now"] - got["wall"]) < 2
    assert abs(got["db_minus_local"] + skew) < 2  # the database's clock is the truth
    assert abs(got["child_minus_local"]) < 2  # a step the node starts is skewed alike
    assert 0.29 < got["trio_slept"] < 1
    # libfaketime 0.9.10 fakes CLOCK_MONOTONIC too: its value becomes the faked wall time
    # (still advancing at the real rate, so trio's deadlines hold)...
    assert abs(got["monotonic"] - got["wall"]) < 2 and abs(got["monotonic"] - real_mono) > 1000
    # ...unless told not to.
    for told in (clocks(faketime, postgres_url, {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}),
                 clocks([faketime[0], "--exclude-monotonic", *faketime[1:]], postgres_url)):
        assert abs(told["wall"] - time.time() - skew) < 3
        assert abs(told["monotonic"] - time.monotonic()) < 3


# -- migrations under an advisory lock -------------------------------------------------------

def migrate(url: str, *, locked: bool, go: threading.Event, out: list[str]) -> None:
    with psycopg.connect(url) as conn:
        try:
            with conn.transaction():
                if locked:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x706970656C696E65,))
                conn.execute("CREATE TABLE IF NOT EXISTS fires (job text, at timestamptz)")
                go.wait(10)  # the other node starts while this one's DDL is uncommitted
            out.append("ok")
        except psycopg.Error as exc:
            out.append(type(exc).__name__)


@pytest.mark.parametrize("locked", [False, True])
def test_concurrent_migrations_collide_unless_under_an_advisory_xact_lock(
        postgres: Postgres, locked: bool) -> None:
    url = postgres.database()
    try:
        go = threading.Event()
        first: list[str] = []
        second: list[str] = []
        one = threading.Thread(target=migrate, args=(url,),
                               kwargs={"locked": locked, "go": go, "out": first})
        one.start()
        time.sleep(0.3)  # the first holds its DDL (and lock) open
        other = threading.Event()
        other.set()
        two = threading.Thread(target=migrate, args=(url,),
                               kwargs={"locked": locked, "go": other, "out": second})
        two.start()
        time.sleep(0.3)  # the second is now waiting on the first
        go.set()
        one.join(10)
        two.join(10)
        assert first == ["ok"]
        # IF NOT EXISTS is no guard between two transactions: the second's catalogue insert
        # waits on the first's, then fails on the unique index. Under the lock it waits, then
        # sees the table and does nothing.
        assert second == (["ok"] if locked else ["UniqueViolation"])
    finally:
        postgres.drop(url)


# -- secrets in URLs -------------------------------------------------------------------------

def test_where_a_url_password_shows_and_where_it_does_not(postgres: Postgres) -> None:
    secret = "s3cret-Pa55"
    # libpq quotes a malformed URI whole in its parse error, password included: mask the URL
    # before any message, never rely on the driver's.
    bad = f"postgresql://node:{secret}@[::1/pipeline"
    with pytest.raises(psycopg.ProgrammingError) as caught:
        conninfo_to_dict(bad)
    assert secret in str(caught.value)
    with pytest.raises(psycopg.Error) as caught_connect:
        psycopg.connect(bad)
    assert secret in str(caught_connect.value)
    # A well-formed one parses; dropping the password gives a printable conninfo.
    params = conninfo_to_dict(f"postgresql://node:{secret}@db.example:5432/pipeline"
                              "?connect_timeout=3")
    assert params.pop("password") == secret
    assert make_conninfo(**params) == (
        "user=node connect_timeout=3 dbname=pipeline host=db.example port=5432")
    # A failed connection names host and port, not the password.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(f"postgresql://node:{secret}@127.0.0.1:1/pipeline", connect_timeout=2)
    assert secret not in str(refused.value)
    # And a live connection's dsn leaves it out (trust auth ignores the password given).
    url = postgres.admin_url.replace("postgres@", f"postgres:{secret}@", 1)
    if postgres.data_dir is not None:
        with psycopg.connect(url) as conn:
            assert secret not in conn.info.dsn and conn.info.password == secret


def test_stale_faketime_entries_of_dead_wrappers_are_cleared(tmp_path: Path) -> None:
    """A faketime wrapper killed by -9 leaves its shared memory and semaphore; a new wrapper
    given the same PID then fails ("sem_open: File exists"). Only dead PIDs' entries go."""
    from tests.faults.cluster import clear_stale_faketime

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getpid()
    for name in (f"faketime_shm_{dead.pid}", f"sem.faketime_sem_{dead.pid}",
                 f"faketime_shm_{alive}", f"sem.faketime_sem_{alive}", "PostgreSQL.1"):
        (tmp_path / name).write_bytes(b"")
    clear_stale_faketime(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "PostgreSQL.1", f"faketime_shm_{alive}", f"sem.faketime_sem_{alive}"]

"""A throwaway PostgreSQL for the tests (issue 11), as a pytest plugin.

    postgres      (session) the server: ``admin_url``, ``database()``, ``url()``, and for fault
                  tests ``restart()``, ``stop()``, ``start()`` and ``pid()``
    postgres_url  (function) the URL of a fresh, empty database that is dropped after the test

The server is made once per session with ``initdb`` + ``pg_ctl`` from the installed PostgreSQL
(``/usr/lib/postgresql/<N>/bin``, the newest, or ``PIPELINE_TEST_PG_BIN``) in a directory under
/tmp, as the ``postgres`` user when the tests run as root (initdb refuses root). It is tuned for
tests, not durability (``fsync=off``...), listens on all IPv4 addresses of a free port so that a
process in a network namespace (``tests/faults/netns.py``) reaches it, and lets in only loopback
and the namespaces' range (``NETNS_RANGE``) without a password; pg_hba rejects everyone else.

``PIPELINE_TEST_POSTGRES=postgresql://...`` uses that server instead (its user must be allowed to
create databases); the fault methods then skip, since an outside server is not ours to restart.

When the server cannot be had, every test that asks for it skips with the reason, except under
``CI=true`` where it fails: CI must never turn the PostgreSQL tests green by skipping them.

The server is always stopped: at the end of the session, at interpreter exit after Ctrl-C, and
(for a session that was killed outright) by the next session, which stops and removes the servers
of dead sessions it finds under /tmp.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ENV_URL = "PIPELINE_TEST_POSTGRES"
ENV_BIN = "PIPELINE_TEST_PG_BIN"
DIR_PREFIX = "pipeline-pg-"
# RFC 2544's benchmarking range: never routed on the internet, unlikely to be used on the host.
# tests/faults/netns.py takes its namespaces' addresses from it.
NETNS_RANGE = "198.18.0.0/15"

SETTINGS = {
    # Test speed over durability: a crash of this server loses nothing anyone needs.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Three daemons, each with a pool, plus the tests' own connections.
    "max_connections": "200",
    "listen_addresses": "'0.0.0.0'",
    "log_line_prefix": "'%m [%p] %d '",
    "log_connections": "off",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (or ``PIPELINE_TEST_PG_BIN``)."""
    if os.environ.get(ENV_BIN):
        return Path(os.environ[ENV_BIN])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def with_database(url: str, dbname: str, *, host: str | None = None) -> str:
    """``url`` pointing at ``dbname`` (and ``host``, keeping the port), everything else kept."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if host is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        port = hostport.rpartition(":")[2] if ":" in hostport else ""
        netloc = (userinfo + "@" if userinfo else "") + host + (":" + port if port else "")
    return urlunsplit((parts.scheme, netloc, "/" + quote(dbname), parts.query, parts.fragment))


class Unavailable(Exception):
    """PostgreSQL could not be started or reached; the message says why."""


@dataclass
class Postgres:
    """A PostgreSQL server for the tests.

    ``data_dir`` is None for an outside server (``PIPELINE_TEST_POSTGRES``), which the fault
    methods refuse to touch (they skip the test).
    """

    admin_url: str
    data_dir: Path | None = None
    bin_dir: Path | None = None
    run_as: str | None = None  # the user pg_ctl runs as, when the tests run as root
    startup_seconds: dict[str, float] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)  # databases made and not dropped yet

    # -- databases ---------------------------------------------------------------------------

    def url(self, dbname: str, *, host: str | None = None) -> str:
        """The URL of ``dbname`` on this server, reached through ``host`` if given (a
        namespace's view of the host, say)."""
        return with_database(self.admin_url, dbname, host=host)

    def database(self, prefix: str = "t") -> str:
        """Create an empty database and return its URL. From template0, so that nothing a test
        left in template1 leaks in; a few milliseconds with fsync off."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0")
                         .format(sql.Identifier(name)))
        self.made.append(name)
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url``, disconnecting whoever is still in it (a daemon the test
        killed may have left a backend behind)."""
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))
        if name in self.made:
            self.made.remove(name)

    # -- faults ------------------------------------------------------------------------------

    def _ours(self) -> Path:
        if self.data_dir is None:
            pytest.skip(f"{ENV_URL} names an outside server: the tests do not stop or restart it")
        return self.data_dir

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        data = self._ours()
        assert self.bin_dir is not None
        return _run([str(self.bin_dir / "pg_ctl"), "-D", str(data), *args],
                    user=self.run_as, check=check)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart``: every connection is closed (``fast`` rolls back open
        transactions; ``immediate`` is a crash and recovery)."""
        self.pg_ctl("restart", "-w", "-m", mode, "-l", str(self._ours().parent / "server.log"))

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-w", "-m", mode)

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", "30", "-l", str(self._ours().parent / "server.log"))

    def running(self) -> bool:
        return self.pg_ctl("status", check=False).returncode == 0

    def pid(self) -> int:
        """The postmaster's pid."""
        return int((self._ours() / "postmaster.pid").read_text().split()[0])

    def log(self) -> str:
        path = self._ours().parent / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _run(argv: list[str], *, user: str | None, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # subprocess switches user itself: no su/runuser, whose PAM sessions vary between images.
    entry = pwd.getpwnam(user) if user is not None else None
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False,
        user=entry.pw_uid if entry else None, group=entry.pw_gid if entry else None,
        extra_groups=[] if entry else None,
        cwd="/" if entry else None)  # the tests' cwd may not be readable by that user
    if check and done.returncode != 0:
        raise Unavailable(f"{' '.join(argv)} exited {done.returncode}: "
                          f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(bin_dir: Path, run_as: str | None) -> None:
    """Stop and remove the servers of test sessions that died without cleaning up."""
    for top in Path(tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        try:
            owner = int((top / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # being made right now, or not ours
        if _alive(owner):
            continue
        if (top / "data" / "postmaster.pid").exists():
            _run([str(bin_dir / "pg_ctl"), "-D", str(top / "data"), "stop", "-m", "immediate",
                  "-w"], user=run_as, check=False)
        shutil.rmtree(top, ignore_errors=True)


def start_server() -> Postgres:
    """initdb + pg_ctl start a new cluster; Unavailable (with the reason) if that fails."""
    bin_dir = pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        raise Unavailable("no PostgreSQL found in /usr/lib/postgresql/*/bin "
                          f"(install the postgresql package, or set {ENV_URL} or {ENV_BIN})")
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user for initdb") from None
        run_as = "postgres"
    reap_stale(bin_dir, run_as)

    timings: dict[str, float] = {}
    top = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    (top / "owner.pid").write_text(str(os.getpid()))
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(top, entry.pw_uid, entry.pw_gid)
    data = top / "data"
    started = time.perf_counter()
    _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
          "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"], user=run_as)
    timings["initdb"] = time.perf_counter() - started
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all all 127.0.0.1/32 trust\n"
        f"host all all {NETNS_RANGE} trust\n"
        "host all all 0.0.0.0/0 reject\n")
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# tests/postgres.py\n")
        for key, value in SETTINGS.items():
            conf.write(f"{key} = {value}\n")
        conf.write(f"unix_socket_directories = '{top}'\n")

    server = Postgres(admin_url="", data_dir=data, bin_dir=bin_dir, run_as=run_as,
                      startup_seconds=timings)
    # The port is free when picked but may be taken before the server binds it (another
    # session picking at the same moment): try a few.
    for attempt in range(5):
        port = free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {port}\n")  # the last setting of a name wins
        started = time.perf_counter()
        try:
            server.start()
        except Unavailable:
            if attempt == 4 or "could not" not in server.log():
                raise Unavailable(
                    f"pg_ctl start failed; its log says:\n{server.log()[-2000:]}") from None
            continue
        timings["start"] = time.perf_counter() - started
        server.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return server
    raise AssertionError("unreachable")


def stop_server(server: Postgres) -> None:
    if server.data_dir is None:  # not ours to stop: drop what the tests left in it
        for name in list(server.made):
            with contextlib.suppress(psycopg.Error):
                server.drop(server.url(name))
        return
    with contextlib.suppress(Unavailable, subprocess.TimeoutExpired):
        if (server.data_dir / "postmaster.pid").exists():
            server.pg_ctl("stop", "-w", "-m", "immediate")
    shutil.rmtree(server.data_dir.parent, ignore_errors=True)


def outside_server(url: str) -> Postgres:
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise Unavailable(f"{ENV_URL} cannot be reached: {exc}") from None
    return Postgres(admin_url=url)


_summary: list[str] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL server (see the module docstring)."""
    server = None
    try:
        if os.environ.get(ENV_URL):
            server = outside_server(os.environ[ENV_URL])
        else:
            server = start_server()
    except Unavailable as exc:
        if server is not None:
            stop_server(server)
        if in_ci():
            pytest.fail(f"PostgreSQL is required under CI=true: {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL: {exc}")
    # atexit as well as the finally: a Ctrl-C between tests may skip fixture teardown.
    atexit.register(stop_server, server)
    if server.startup_seconds:
        _summary.append("PostgreSQL for the tests: " + ", ".join(
            f"{step} {seconds:.2f}s" for step, seconds in server.startup_seconds.items()))
    try:
        yield server
    finally:
        stop_server(server)
        atexit.unregister(stop_server)


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """A fresh empty database for one test; dropped afterwards."""
    if postgres.data_dir is not None and not postgres.running():
        postgres.start()  # a fault test before this one stopped it and failed
    url = postgres.database()
    yield url
    if postgres.data_dir is None or postgres.running():
        postgres.drop(url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _summary:
        terminalreporter.write_line(line)

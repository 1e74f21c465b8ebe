"""Three real ``pipeline serve`` nodes on one PostgreSQL, and the faults of CLUSTER.md's table.

    with open_cluster(tmp, postgres) as cluster:      # nodes a, b, and c in a network namespace
        cluster.start()
        fault = kill_node(cluster, "a")                # or freeze_node, stall_node, cut_link,
        report = check_cluster(cluster)                # restart_database, skew_nodes, overlap

Each node has its own state directory and its own copy of the jobs directory (identical, as on
machines kept in step by git), its own ``HOME`` (the steps name their node by it), and its own
log. Node ``c`` lives in its own network namespace, reaching PostgreSQL over a veth pair whose
link ``cut_link`` cuts, and with its own boot id (``/proc/sys/kernel/random/boot_id`` bound over
in its mount namespace): to the others it is a node of another machine, so its loss is judged by
its lease alone, while ``a`` and ``b`` are seen dead at once when their process is (their
identity is of this machine).

The workload (``workload``) is three jobs firing every second whose one ``run:`` step is
``effect.sh``: it appends a ``start`` line and an ``end`` line (the fire's job, run id, attempt,
fire time, node, and /proc/uptime, which faketime does not shift) to a shared file, holding an
``flock`` on the run (and for the ``forbid`` job, on the job) for as long as any process of the
attempt lives: a second attempt that starts while the first still runs finds the lock taken and
says so. ``cluster_invariants.check_cluster`` reads that file, the store and /proc.

Every fault returns a ``Fault`` with what it measured (the takeover time of a lost node's runs
above all) and any problem it saw on the spot; ``run_table`` drives a mix of them and checks
the invariants after each. Sizes: ``table_counts()``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
import yaml
from psycopg.rows import dict_row

from tests.faults import netns
from tests.faults.driver import MARK, kill_marked, scan_environ, wait_for
from tests.postgres import Postgres

DAEMON_FILE = "daemon.json"
LEASE = 3.0  # seconds: the test timing of issue 11
NAMES = ("a", "b", "c")
NAMESPACED = "c"
# Runs a node holds at once: the scheduler that claims a fire first holds its run while it
# can, so without a cap one node may well run everything (and the others nothing to lose).
MAX_RUNS = 3

EFFECT = r"""#!/bin/bash
# effect.sh SECONDS [forbid]: one attempt of a step, as side effects the harness checks.
set -u
read -r up _ < /proc/uptime
what="$PIPELINE_JOB $PIPELINE_RUN_ID $PIPELINE_ATTEMPT $PIPELINE_FIRE_TIME ${HOME##*/}"
locks=ok
# Held by every process of this attempt until the last one is gone, however it ends.
exec 8>>"$CLUSTER_LOCKS/run-$PIPELINE_RUN_ID"
flock -n 8 || locks=run-busy
if [ "${2:-}" = forbid ]; then
  exec 9>>"$CLUSTER_LOCKS/job-$PIPELINE_JOB"
  flock -n 9 || locks="$locks,job-busy"
fi
echo "start $what $up $locks" >> "$CLUSTER_EFFECTS"
finish() { read -r up _ < /proc/uptime; echo "end $what $up $1" >> "$CLUSTER_EFFECTS"; }
trap 'finish term; exit 143' TERM
echo "step of $PIPELINE_RUN_ID on ${HOME##*/}: started"
sleep "$1" & wait $!
finish done
echo "step of $PIPELINE_RUN_ID on ${HOME##*/}: done"
"""


def uptime() -> float:
    """Seconds since boot: the one clock the steps, the harness and faked nodes all share."""
    return float(Path("/proc/uptime").read_text().split()[0])


def wall_of(up: float) -> datetime:
    """The wall-clock time (UTC) of an uptime reading, by this (unfaked) process's clocks."""
    return datetime.now(UTC) - timedelta(seconds=uptime() - up)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _state(pid)
    return state is not None and state != "Z"


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


# -- nodes -----------------------------------------------------------------------------------

@dataclass
class Life:
    """One start of a node's daemon, from spawn to exit."""

    proc: subprocess.Popen[bytes]  # the daemon, or the faketime wrapper that forked it
    log: Path
    skew: str | None
    started: float  # uptime
    pid: int | None = None  # the daemon's own pid (from daemon.json)
    ready: float | None = None  # uptime when it served
    ended: float | None = None
    how: str = ""  # kill, term, ...
    ids: list[str] = field(default_factory=list)  # its node ids in the store (re-registers)

    def lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines())


@dataclass
class Node:
    name: str
    root: Path  # its HOME: the steps name their node by its last component
    url: str  # the store, as this node reaches it
    namespace: netns.Namespace | None = None
    boot_id: Path | None = None  # bound over the machine's boot id (the namespaced node)
    lives: list[Life] = field(default_factory=list)
    labels: str = ""

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.d"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def life(self) -> Life:
        assert self.lives, f"node {self.name} never started"
        return self.lives[-1]

    @property
    def running(self) -> bool:
        return bool(self.lives) and self.life.ended is None and self.life.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.life.pid is not None, f"node {self.name} is not serving"
        return self.life.pid

    def argv(self, *, lease: float, skew: str | None, max_runs: int = 0) -> list[str]:
        serve = [sys.executable, "-m", "pipeline", "serve", "--no-http", "--store", self.url,
                 "--node-name", self.name, "--labels", self.labels or f"zone={self.name}",
                 "--lease", f"{lease:g}s", "--max-runs", str(max_runs or MAX_RUNS), "--grace", "1s",
                 "--log-level", "INFO",
                 "--jobs-dir", str(self.jobs), "--state-dir", str(self.state)]
        if skew is not None:
            # The multi-threaded library (trio's and the pool's threads read the clock), and
            # the monotonic clock left alone: fencing is judged by it (CLUSTER-HARNESS.md).
            serve = ["faketime", "-m", "-f", skew, *serve]
        if self.namespace is None:
            return serve
        assert self.boot_id is not None
        # Its own mount namespace (ip netns exec makes one, slave to the host's): the bind
        # mount is seen by this node and its steps only.
        inside = ('mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"')
        return self.namespace.argv("sh", "-c", inside, str(self.boot_id), *serve)

    def start(self, *, lease: float, skew: str | None = None, wait: bool = True,
              environ: Mapping[str, str] | None = None, max_runs: int = 0) -> Life:
        assert not self.running, f"node {self.name} is running"
        env = {k: v for k, v in (environ or os.environ).items()
               if not k.startswith(("PIPELINE_", "FAKETIME"))}
        env["HOME"] = str(self.root)
        if skew is not None:
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            clear_stale_faketime()
        (self.state / DAEMON_FILE).unlink(missing_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        log = self.root / f"serve.{len(self.lives)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(self.argv(lease=lease, skew=skew, max_runs=max_runs),
                                    stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        life = Life(proc, log, skew, uptime())
        self.lives.append(life)
        if wait:
            self.wait_ready()
        return life

    def _ready(self) -> bool:
        life = self.life
        try:
            info = json.loads((self.state / DAEMON_FILE).read_text())
        except (OSError, ValueError):
            return False
        pid = info.get("pid")
        if not isinstance(pid, int) or not alive(pid):
            return False
        life.pid, life.ready = pid, uptime()
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        life = self.life

        def settled() -> bool:
            if life.ready is not None or self._ready():
                return True
            if life.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited {life.proc.returncode} before "
                                     "serving: " + " | ".join(life.lines()[-8:]))
            return False

        wait_for(settled, timeout=timeout, what=f"node {self.name} to serve")

    def _ended(self, how: str) -> None:
        life = self.life
        if life.ended is None:
            life.ended, life.how = uptime(), how

    def kill(self) -> float:
        """kill -9 the daemon (not its watchdog, not its steps); the uptime of the kill."""
        at = uptime()
        pid = self.life.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.life.proc.kill()
        self.life.proc.wait(10)
        self._ended("kill")
        return at

    def terminate(self) -> None:
        """SIGTERM to the daemon, once (a second would kill its runs at once)."""
        if self.life.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.life.pid, signal.SIGTERM)
        else:
            self.life.proc.terminate()

    def wait_stopped(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit after ``terminate``; its exit status."""
        code = self.life.proc.wait(timeout)
        self._ended("term")
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the daemon; its exit status."""
        self.terminate()
        return self.wait_stopped(timeout)

    def freeze(self) -> float:
        at = uptime()
        os.kill(self.pid, signal.SIGSTOP)
        return at

    def thaw(self) -> float:
        at = uptime()
        os.kill(self.pid, signal.SIGCONT)
        return at

    def close(self) -> None:
        for life in self.lives:
            if life.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(life.pid, signal.SIGCONT)
                    os.kill(life.pid, signal.SIGKILL)
            if life.proc.poll() is None:
                life.proc.kill()
            life.proc.wait(10)
            if life.ended is None:
                life.ended, life.how = uptime(), "close"


# -- faults ----------------------------------------------------------------------------------

@dataclass
class Fault:
    """One fault the harness caused, and what it measured."""

    kind: str  # one of KINDS: kill, freeze, stall, cut, restart, skew, overlap
    node: str | None  # the node it hit (None: the database)
    at: float  # uptime when it began
    until: float | None = None  # uptime when it ended (thaw, restore, restart done)
    node_ids: tuple[str, ...] = ()  # the ids the node had when it was hit
    held: tuple[str, ...] = ()  # runs running on the node when it was hit
    takeover: float | None = None  # s from the fault to the last of `held` being taken back
    fenced: float | None = None  # s from the fault until its steps were gone (freeze, cut)
    expired: float | None = None  # s from the fault until its lease ran out
    problems: list[str] = field(default_factory=list)
    note: str = ""
    all_lost: bool = False  # every node may have been lost (a long database restart)

    def describe(self) -> str:
        bits = [f"{self.kind}" + (f" {self.node}" if self.node else "")]
        if self.held:
            bits.append(f"{len(self.held)} runs held")
        if self.takeover is not None:
            bits.append(f"taken over in {self.takeover:.2f}s")
        if self.fenced is not None:
            bits.append(f"steps gone after {self.fenced:.2f}s")
        if self.expired is not None:
            bits.append(f"lease out after {self.expired:.2f}s")
        if self.note:
            bits.append(self.note)
        return ", ".join(bits) + "".join(f"\n    PROBLEM {p}" for p in self.problems)


# -- the cluster -----------------------------------------------------------------------------

@dataclass
class Cluster:
    root: Path
    postgres: Postgres
    url: str  # the database, on 127.0.0.1
    lease: float = LEASE
    mark: str = field(default_factory=lambda: f"cluster-{secrets.token_hex(6)}")
    nodes: dict[str, Node] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    namespace: netns.Namespace | None = None
    started: float = 0.0  # uptime when the nodes were started
    checked: int = 0  # invariant checks so far

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.d"  # the copy every node's is made from

    @property
    def effects(self) -> Path:
        return self.root / "effects"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def script(self) -> Path:
        return self.root / "effect.sh"

    # -- jobs --------------------------------------------------------------------------------

    def job(self, name: str, document: Mapping[str, Any]) -> None:
        """Write ``NAME.yaml`` to the cluster's jobs directory and every node's copy (each
        atomically), with the harness's mark and the effect files in its ``env``."""
        doc = dict(document)
        doc["env"] = {**dict(doc.get("env", {})), MARK: self.mark,
                      "CLUSTER_EFFECTS": str(self.effects), "CLUSTER_LOCKS": str(self.locks)}
        text = yaml.safe_dump(doc, sort_keys=False)
        for directory in [self.jobs, *(node.jobs for node in self.nodes.values())]:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(directory / f"{name}.yaml")

    def effect(self, seconds: float, *, forbid: bool = False) -> str:
        return f"bash {self.script} {seconds:g}" + (" forbid" if forbid else "")

    # -- nodes -------------------------------------------------------------------------------

    def start(self, names: Sequence[str] | None = None) -> None:
        """Start the nodes (all of them at once: they migrate under the advisory lock)."""
        chosen = [self.nodes[n] for n in (names or list(self.nodes))]
        for node in chosen:
            node.start(lease=self.lease, wait=False)
        for node in chosen:
            node.wait_ready()
            self.learn_ids(node)
        if not self.started:
            self.started = uptime()

    def learn_ids(self, node: Node, timeout: float = 10.0) -> list[str]:
        """The store ids of ``node``'s current life (it takes a new one when it registers
        again after being found lost)."""
        life = node.life

        def found() -> list[str]:
            rows = self.query("SELECT id, identity FROM nodes WHERE name = %s "
                              "ORDER BY started_at", (node.name,))
            return [r["id"] for r in rows
                    if life.pid is not None and _identity_pid(r["identity"]) == life.pid]

        ids = wait_for(found, timeout=timeout, what=f"node {node.name} registered")
        life.ids = list(ids)
        return life.ids

    def current_id(self, node: Node) -> str:
        return self.learn_ids(node)[-1]

    def alive_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    # -- the store ---------------------------------------------------------------------------

    def query(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                             row_factory=dict_row) as conn:
            return list(conn.execute(sql, args).fetchall())  # type: ignore[arg-type]

    def held(self, node_id: str) -> list[str]:
        """Runs the store says ``node_id`` is running."""
        return [r["id"] for r in self.query(
            "SELECT id FROM runs WHERE node = %s AND status = 'running'", (node_id,))]

    def wait_holding(self, node: Node, *, timeout: float = 10.0, jobs: Sequence[str] = ()) -> str:
        """Wait until ``node`` runs at least one run (of one of ``jobs``, if given) whose
        step has started; its current id."""
        node_id = self.current_id(node)

        def holding() -> bool:
            rows = self.query(
                "SELECT r.id, r.job FROM runs r JOIN steps s ON s.run_id = r.id "
                "WHERE r.node = %s AND r.status = 'running' AND s.status = 'running'",
                (node_id,))
            return any(not jobs or r["job"] in jobs for r in rows)

        wait_for(holding, timeout=timeout, interval=0.05,
                 what=f"node {node.name} to run a step")
        return node_id

    def taken_back(self, runs: Sequence[str], node_ids: Sequence[str]) -> dict[str, float]:
        """For each of ``runs`` that is no longer running on one of ``node_ids``: the uptime
        at which it was taken back (the reaper's recorded time), or at which it ended."""
        if not runs:
            return {}
        rows = self.query("SELECT id, status, node, finished_at, ready_at, started_at, attempt "
                          "FROM runs WHERE id = ANY(%s)", (list(runs),))
        found = {}
        for r in rows:
            if r["status"] == "running" and r["node"] in node_ids:
                continue
            stamp = r["finished_at"] if r["status"] not in ("queued", "running") \
                else r["ready_at"]
            at = datetime.fromisoformat(stamp) if stamp else datetime.now(UTC)
            found[r["id"]] = uptime() - (datetime.now(UTC) - at).total_seconds()
        return found

    def close(self) -> list[int]:
        for node in self.nodes.values():
            node.close()
        return kill_marked(self.mark)


def _identity_pid(identity: str | None) -> int | None:
    """The pid in a node's identity (``BOOT/PIDNS/PID:START``)."""
    if not identity:
        return None
    pid = identity.rpartition("/")[2].partition(":")[0]
    return int(pid) if pid.isdigit() else None


@contextlib.contextmanager
def open_cluster(root: Path, postgres: Postgres, *, lease: float = LEASE,
                 names: Sequence[str] = NAMES, namespaced: str | None = NAMESPACED,
                 ) -> Iterator[Cluster]:
    """Three nodes' directories, a fresh database, and node ``namespaced`` in a network
    namespace; on exit every process is ended, the namespace removed, the database dropped."""
    root.mkdir(parents=True, exist_ok=True)
    url = postgres.database("cluster")
    # The test server commits without waiting for its WAL (fsync=off, synchronous_commit=off):
    # a crash (pg_ctl restart -m immediate) would then lose commits it had acknowledged, which
    # no database in production does. Its files may stay unsynced (the machine does not
    # crash), but the cluster's commits wait for the WAL as they would in production, unless
    # the store itself says not to (SET LOCAL synchronous_commit = off).
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
            psycopg.sql.Identifier(url.rpartition("/")[2])))
    cluster = Cluster(root, postgres, url, lease=lease)
    cluster.effects.touch()
    cluster.locks.mkdir(exist_ok=True)
    cluster.script.write_text(EFFECT)
    with contextlib.ExitStack() as stack:
        try:
            for name in names:
                node_root = root / name
                node_root.mkdir(exist_ok=True)
                node = Node(name, node_root, url)
                if name == namespaced:
                    ns = stack.enter_context(netns.open_namespace())
                    cluster.namespace = node.namespace = ns
                    node.url = postgres.url(url.rpartition("/")[2], host=ns.host_address)
                    node.boot_id = node_root / "boot_id"
                    node.boot_id.write_text(secrets.token_hex(16) + "\n")
                cluster.nodes[name] = node
            yield cluster
        finally:
            cluster.close()
            stack.close()
            if postgres.data_dir is None or postgres.running():
                with contextlib.suppress(psycopg.Error):
                    postgres.drop(url)


def workload(cluster: Cluster, *, step: float = 1.2) -> None:
    """The jobs every fault meets: every second, each with one step of ``step`` seconds (the
    forbid job's is longer than its interval)."""
    allow = {"policy": "allow", "max_active": 5}
    cluster.job("plain", {"schedule": "every 1s", "concurrency": allow,
                          "steps": [{"id": "s", "run": cluster.effect(step)}]})
    cluster.job("again", {"schedule": "every 1s", "concurrency": allow,
                          "on_node_loss": "retry",
                          "steps": [{"id": "s", "run": cluster.effect(step)}]})
    cluster.job("solo", {"schedule": "every 1s", "concurrency": "forbid",
                         "steps": [{"id": "s", "run": cluster.effect(step * 2, forbid=True)}]})


# -- the faults ------------------------------------------------------------------------------

def _runs_of(cluster: Cluster, node_ids: Sequence[str]) -> list[str]:
    return [r["id"] for r in cluster.query(
        "SELECT id FROM runs WHERE node = ANY(%s) AND status = 'running'", (list(node_ids),))]


def _processes_of(runs: Sequence[str]) -> dict[int, str]:
    return scan_environ("PIPELINE_RUN_ID", list(runs)) if runs else {}


def _expires(cluster: Cluster, node_id: str) -> float | None:
    rows = cluster.query("SELECT expires_at FROM nodes WHERE id = %s", (node_id,))
    if not rows:
        return None
    at = datetime.fromisoformat(rows[0]["expires_at"])
    return uptime() - (datetime.now(UTC) - at).total_seconds()


def _await_takeover(cluster: Cluster, fault: Fault, *, timeout: float) -> None:
    """Wait until every run the node held has been taken back (or ended); record when."""
    if not fault.held:
        return
    deadline = time.monotonic() + timeout
    done: dict[str, float] = {}
    while time.monotonic() < deadline:
        done = cluster.taken_back(fault.held, fault.node_ids)
        if len(done) == len(fault.held):
            break
        time.sleep(0.05)
    if len(done) < len(fault.held):
        left = sorted(set(fault.held) - set(done))
        fault.problems.append(f"runs {left} still held by the lost node {timeout:g}s after "
                              "the fault")
        return
    fault.takeover = max(0.0, max(done.values()) - fault.at)
    limit = cluster.lease + 5
    if fault.takeover > limit:
        fault.problems.append(f"takeover took {fault.takeover:.2f}s, over lease + 5 s "
                              f"({limit:g}s)")


def clear_stale_faketime(shm: Path = Path("/dev/shm")) -> None:
    """Remove what ``faketime`` wrappers killed by -9 left in /dev/shm (``faketime_shm_PID``,
    ``sem.faketime_sem_PID``): a wrapper removes them only when it exits itself, and a new one
    whose PID a dead one had fails with "sem_open: File exists" (140 were left after a day of
    fault tables). Only entries of PIDs that no longer exist are touched."""
    for entry in [*shm.glob("faketime_shm_*"), *shm.glob("sem.faketime_sem_*")]:
        pid = entry.name.rsplit("_", 1)[-1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        entry.unlink(missing_ok=True)


def kill_node(cluster: Cluster, name: str, *, restart: bool = True,
              jobs: Sequence[str] = ()) -> Fault:
    """kill -9 a node while it runs steps; its runs must be taken back (interrupted, or queued
    again for ``on_node_loss: retry``) within lease + 5 s; then start it again."""
    node = cluster.nodes[name]
    node_id = cluster.wait_holding(node, jobs=jobs)
    ids = tuple(node.life.ids)
    held = _runs_of(cluster, ids)
    at = node.kill()
    fault = Fault("kill", name, at, node_ids=ids, held=tuple(held))
    cluster.faults.append(fault)
    _await_takeover(cluster, fault, timeout=cluster.lease + 10)
    fault.until = uptime()
    fault.note = "seen dead" if node.namespace is None else "lease ran out"
    del node_id
    if restart:
        node.start(lease=cluster.lease)
        cluster.learn_ids(node)
    return fault


def _fenced_while_away(cluster: Cluster, fault: Fault, node: Node, *,
                       timeout: float) -> None:
    """While the node is away (frozen, cut off): its steps must be gone before its lease runs
    out (its watchdog, or its own fence, killed them), and its runs taken back after."""
    processes = _processes_of(fault.held)
    expiry = _expires(cluster, fault.node_ids[-1])
    deadline = time.monotonic() + timeout
    gone_at = None if processes else fault.at
    while time.monotonic() < deadline:
        if gone_at is None and not any(alive(pid) for pid in processes):
            gone_at = uptime()
        done = cluster.taken_back(fault.held, fault.node_ids)
        if gone_at is not None and len(done) == len(fault.held):
            break
        time.sleep(0.02)
    if expiry is not None:
        fault.expired = expiry - fault.at
    if gone_at is None:
        fault.problems.append(f"the steps of node {node.name} ({sorted(processes)}) were still "
                              f"alive {timeout:g}s after it went away")
    else:
        fault.fenced = gone_at - fault.at
        if expiry is not None and gone_at > expiry:
            fault.problems.append(
                f"node {node.name}'s steps were killed {gone_at - expiry:.2f}s after its lease "
                "ran out: another node could have started them again meanwhile")
    _await_takeover(cluster, fault, timeout=max(1.0, deadline - time.monotonic()))


def _after_return(cluster: Cluster, fault: Fault, node: Node, *, timeout: float = 10.0) -> None:
    """A node that comes back after being found lost must fence itself, register again under
    a new id, and have its writes about the runs it lost refused."""
    life = node.life
    before = len(life.ids)

    def again() -> bool:
        return len(cluster.learn_ids(node)) > before

    try:
        wait_for(again, timeout=timeout, what=f"node {node.name} to register again")
    except AssertionError as exc:
        fault.problems.append(str(exc))
        return
    if not any("fencing this node" in line for line in life.lines()):
        fault.problems.append(f"node {node.name} came back without saying it fenced itself")
    # Its runs were taken back while it was away; whatever it tried to write about them on
    # waking (the steps its watchdog killed, its fence) must not have landed.
    for run in cluster.query("SELECT id, status, node, reason, attempt FROM runs "
                             "WHERE id = ANY(%s)", (list(fault.held),)):
        if run["node"] in fault.node_ids and run["status"] not in ("interrupted",):
            fault.problems.append(f"run {run['id']} of the lost node ended {run['status']} "
                                  f"({run['reason']}): a write of the lost node landed")
        if run["reason"] and "fenced" in run["reason"]:
            fault.problems.append(f"run {run['id']} ended with the lost node's own reason "
                                  f"({run['reason']}): its write was not refused")


def freeze_node(cluster: Cluster, name: str, *, beyond: float = 0.5,
                jobs: Sequence[str] = ()) -> Fault:
    """SIGSTOP a node running steps for longer than the lease, SIGCONT it once its runs were
    taken back: its watchdog must have killed its steps before the lease ran out, and on
    waking it fences itself, registers again, and its old writes are refused."""
    node = cluster.nodes[name]
    cluster.wait_holding(node, jobs=jobs)
    ids = tuple(node.life.ids)
    held = tuple(_runs_of(cluster, ids))
    at = node.freeze()
    fault = Fault("freeze", name, at, node_ids=ids, held=held)
    cluster.faults.append(fault)
    try:
        _fenced_while_away(cluster, fault, node, timeout=cluster.lease + 10)
        rest = at + cluster.lease + beyond - uptime()
        if rest > 0:
            time.sleep(rest)
    finally:
        fault.until = node.thaw()
    _after_return(cluster, fault, node)
    return fault


def stall_node(cluster: Cluster, name: str, *, fraction: float = 0.8,
               jobs: Sequence[str] = ()) -> Fault:
    """SIGSTOP a node running steps for ``fraction`` of the lease: past two thirds of it, when
    its watchdog kills its steps, but (usually) not long enough for the others to find it
    lost. On waking it must fence itself before anything else (its runs end interrupted,
    never failed by the signal its watchdog sent), then renew and carry on."""
    node = cluster.nodes[name]
    cluster.wait_holding(node, jobs=jobs)
    ids = tuple(node.life.ids)
    held = tuple(_runs_of(cluster, ids))
    at = node.freeze()
    fault = Fault("stall", name, at, node_ids=ids, held=held)
    cluster.faults.append(fault)
    try:
        time.sleep(cluster.lease * fraction)
    finally:
        fault.until = node.thaw()

    def ended() -> list[dict[str, Any]]:
        rows = cluster.query("SELECT id, status, node, reason FROM runs WHERE id = ANY(%s)",
                             (list(held),))
        return rows if all(r["status"] != "running" or r["node"] not in ids
                           for r in rows) else []

    try:
        rows = wait_for(ended, timeout=cluster.lease + 5, what="the stalled node's runs to end")
    except AssertionError as exc:
        fault.problems.append(str(exc))
        return fault
    said = node.life.count("fencing this node")
    if not said:
        fault.problems.append(f"node {name} woke {cluster.lease * fraction:.1f}s later "
                              "without fencing itself")
    lost = len(cluster.learn_ids(node)) > len(ids)
    fault.note = "found lost meanwhile" if lost else "not found lost"
    for r in rows:
        if r["status"] not in ("interrupted", "queued", "running"):
            fault.problems.append(f"run {r['id']} of the stalled node ended {r['status']} "
                                  f"({r['reason']})")
    return fault


def cut_link(cluster: Cluster, *, beyond: float = 0.5, jobs: Sequence[str] = ()) -> Fault:
    """Cut the namespaced node's link to PostgreSQL for longer than the lease, then restore
    it: as frozen, except that the node itself notices and fences (and says so)."""
    ns = cluster.namespace
    assert ns is not None
    node = next(n for n in cluster.nodes.values() if n.namespace is ns)
    cluster.wait_holding(node, jobs=jobs)
    ids = tuple(node.life.ids)
    held = tuple(_runs_of(cluster, ids))
    at = uptime()
    ns.cut()
    fault = Fault("cut", node.name, at, node_ids=ids, held=held)
    cluster.faults.append(fault)
    try:
        _fenced_while_away(cluster, fault, node, timeout=cluster.lease + 10)
        rest = at + cluster.lease + beyond - uptime()
        if rest > 0:
            time.sleep(rest)
    finally:
        ns.restore()
        fault.until = uptime()
    _after_return(cluster, fault, node, timeout=20.0)
    return fault


SKEW_LATE = 5.0  # s: the latest a skewed node's on-time fire may start (by the real clock)
OUTAGE_SAID = "store unreachable"
BACK_SAID = "answers again after"  # the store's own line (the lease says "answers again" too)


def _said(life: Life, since: int) -> list[str]:
    """The warnings and errors of ``life``'s log from line ``since``, without their times."""
    return [line.split(" ", 2)[2] for line in life.lines()[since:]
            if " WARNING " in line or " ERROR " in line]


def restart_database(cluster: Cluster, *, mode: str = "fast", settle: float = 2.5) -> Fault:
    """``pg_ctl restart`` while steps run: the nodes reconnect, say so once (the store one
    line when it is lost and one when it answers again, and nothing said twice), and carry on.
    After a short restart (``lease / 5``: the test server's, fsync off) no node fences itself
    and the runs under way end as they would have (succeeded). A longer one (a durable
    server's checkpoint) may outlast a node's margin before it fences (two thirds of a lease
    from its last renewal, a third of a lease before the restart at worst): then every node
    may fence, or be found lost by another, and the runs under way end interrupted or are
    retried, as after any loss."""
    running = {n.name: n for n in cluster.alive_nodes()}
    marks = {name: len(n.life.lines()) for name, n in running.items()}
    held = tuple(r["id"] for r in cluster.query(
        "SELECT id FROM runs WHERE status = 'running'"))
    at = uptime()
    cluster.postgres.restart(mode)
    until = uptime()
    short = until - at <= cluster.lease / 5
    fault = Fault("restart", None, at, until=until, held=held, all_lost=not short,
                  note=f"-m {mode}, {until - at:.1f}s")
    cluster.faults.append(fault)
    time.sleep(settle)
    for name, node in running.items():
        said = _said(node.life, marks[name])
        lost = sum(OUTAGE_SAID in line for line in said)
        back = sum(BACK_SAID in line for line in said)
        fenced = sum("fencing this node" in line for line in said)
        if fenced and short:
            fault.problems.append(f"node {name} fenced itself for a {fault.until - at:.1f}s "
                                  "restart")
        if lost > 1 or back > 1 or lost != back:
            fault.problems.append(f"node {name} said the store was unreachable {lost} times "
                                  f"and back {back} times for one restart")
        again = [line for line, n in Counter(said).items() if n > 1]
        if again:
            fault.problems.append(f"node {name} said {again[0]!r} {Counter(said)[again[0]]} "
                                  "times for one restart")

    def ended() -> list[dict[str, Any]]:
        rows = cluster.query("SELECT id, status, reason FROM runs WHERE id = ANY(%s)",
                             (list(held),))
        return rows if all(r["status"] not in ("queued", "running") for r in rows) else []

    try:
        rows = wait_for(ended, timeout=15, what="the runs under way at the restart to end") \
            if held else []
    except AssertionError as exc:
        fault.problems.append(str(exc))
        return fault
    for r in rows:
        if r["status"] != "succeeded" and (short or r["status"] != "interrupted"):
            fault.problems.append(f"run {r['id']}, under way at the restart, ended "
                                  f"{r['status']} ({r['reason']})")
    return fault


def stop_nodes(nodes: Sequence[Node]) -> None:
    """SIGTERM to each node at once (each gives its runs a second, ``--grace``), then wait
    for all of them to have stopped cleanly."""
    for node in nodes:
        node.terminate()
    for node in nodes:
        if node.wait_stopped() != 0:
            raise AssertionError(f"node {node.name} did not stop cleanly: "
                                 f"{node.life.lines()[-5:]}")


def skew_node(cluster: Cluster, name: str, skew: str, *, alone: float = 3.0,
              together: float = 2.0) -> Fault:
    """``skew_nodes`` for one node."""
    return skew_nodes(cluster, {name: skew}, alone=alone, together=together)[0]


def skew_nodes(cluster: Cluster, skews: Mapping[str, str], *, alone: float = 3.0,
               together: float = 2.0, restore: bool = True) -> list[Fault]:
    """Restart nodes under ``faketime``, each with its skew (``{"a": "+30s"}``): first
    without the others, for ``alone`` seconds and until each has run a step, so that they
    make every fire themselves, then with the others for ``together`` seconds, racing them
    for each fire. Their fires must start on time by the real clock (the steps' side
    effects say when they started) and once; the invariant check finds any fire doubled or
    skipped. With ``restore``, they are restarted without faketime at the end; otherwise they
    stay skewed until something restarts them. Every start and stop is of all the nodes
    concerned at once: a daemon takes seconds to start on a loaded machine."""
    from tests.faults.cluster_invariants import read_effects

    chosen = [cluster.nodes[name] for name in skews]
    others = [n for n in cluster.alive_nodes() if n.name not in skews]
    stop_nodes([n for n in chosen if n.running] + others)
    at = uptime()
    # Room for every run when alone: a run it cannot hold waits for a poll, late.
    lives = [node.start(lease=cluster.lease, skew=skews[node.name], max_runs=4 * MAX_RUNS,
                        wait=False) for node in chosen]
    for node in chosen:
        node.wait_ready()
        cluster.learn_ids(node)
    faults = [Fault("skew", node.name, at, note=skews[node.name]) for node in chosen]
    cluster.faults.extend(faults)
    began = time.monotonic()

    def each_ran() -> bool:
        ran = {a.node for a in read_effects(cluster.effects) if a.start >= at}
        return all(name in ran for name in skews)

    with contextlib.suppress(AssertionError):  # a node that ran nothing is said below
        wait_for(each_ran, timeout=alone + 10, what="each skewed node to run a step")
    time.sleep(max(0.0, alone - (time.monotonic() - began)))
    if others:
        cluster.start([n.name for n in others])
    time.sleep(together)
    until = uptime()
    effects = read_effects(cluster.effects)
    for fault, node, life in zip(faults, chosen, lives, strict=True):
        fault.until = until
        _judge_skew(cluster, fault, life, [a for a in effects
                                           if a.node == node.name and a.start >= at])
    if restore:
        stop_nodes(chosen)
        cluster.start(list(skews))
    return faults


def _judge_skew(cluster: Cluster, fault: Fault, life: Life, ran: Sequence[Any]) -> None:
    """The steps a skewed node started (``ran``, its side effects since the skew): some,
    and none early or late by the real clock."""
    skew = life.skew
    assert life.ready is not None
    serving = wall_of(life.ready)
    # Fires that came due while it served (not those of the stop, taken late), made on time
    # (not retried after a loss).
    on_time = {r["id"] for r in cluster.query(
        "SELECT id FROM runs WHERE id = ANY(%s) AND trigger = 'schedule' AND attempt = 1",
        ([a.run_id for a in ran],))}
    late = [(wall_of(a.start) - a.fire).total_seconds() for a in ran
            if a.fire is not None and a.fire >= serving and a.run_id in on_time]
    if not ran:
        fault.problems.append(f"node {fault.node} under faketime {skew} ran no step")
    # Never before its instant (a node trusting a clock 30 s ahead would start each fire as
    # soon as the store let it claim it), nor anywhere near 30 s after; a few seconds late
    # is this machine under load (a just-started daemon importing what its first runs need).
    off = [round(x, 3) for x in late if not -0.05 <= x <= SKEW_LATE]
    if off:
        fault.problems.append(f"node {fault.node} under faketime {skew} started steps "
                              f"{off[:5]} s after their fire times (by the real clock)")
    fault.note = (f"{skew}: {len(ran)} steps started on it, "
                  f"{max(late) if late else 0:.3f}s late at most")


def overlap(cluster: Cluster, *, seconds: float = 6.0, job: str = "solo") -> Fault:
    """Watch a ``forbid`` job whose step outlasts its interval, fired by three nodes: never
    two runs active at once (the store's records here; the side effects' job lock in the
    invariant check)."""
    at = uptime()
    fault = Fault("overlap", None, at, note=job)
    cluster.faults.append(fault)
    time.sleep(seconds)
    fault.until = uptime()
    runs = cluster.query("SELECT id, node, started_at, finished_at, status FROM runs "
                         "WHERE job = %s AND started_at IS NOT NULL AND status <> 'skipped' "
                         "ORDER BY started_at", (job,))
    nodes = {r["node"] for r in runs}
    for earlier, later in itertools.pairwise(runs):
        if earlier["finished_at"] is None or earlier["finished_at"] > later["started_at"]:
            if earlier["status"] == "interrupted":
                continue  # taken back from a lost node: its steps' lock tells the rest
            fault.problems.append(f"runs {earlier['id']} and {later['id']} of {job} were "
                                  "active at once")
    fault.note = f"{job}: {len(runs)} runs on {len(nodes)} nodes"
    return fault


# -- the table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    kill: int
    freeze: int
    stall: int
    cut: int
    restart: int
    skew: int
    overlap: int

    @property
    def total(self) -> int:
        return sum(getattr(self, kind) for kind in KINDS)


KINDS = ("kill", "freeze", "stall", "cut", "restart", "skew", "overlap")
# What tests/test_cluster.py drives in CI (one test per kind), and bin/bench's full table.
CI_COUNTS = Counts(kill=6, freeze=3, stall=2, cut=3, restart=4, skew=2, overlap=1)
FULL_COUNTS = Counts(kill=60, freeze=30, stall=20, cut=30, restart=40, skew=12, overlap=8)


def table_counts() -> Counts:
    """CI's sizes, or the full table's with ``PIPELINE_CLUSTER_FULL=1``; any one may be set
    with ``PIPELINE_CLUSTER_<KIND>`` (``PIPELINE_CLUSTER_KILL=100``)."""
    base = FULL_COUNTS if os.environ.get("PIPELINE_CLUSTER_FULL") == "1" else CI_COUNTS
    values = {}
    for kind in KINDS:
        given = os.environ.get(f"PIPELINE_CLUSTER_{kind.upper()}")
        values[kind] = int(given) if given else getattr(base, kind)
    return Counts(**values)


@dataclass
class TableResult:
    seed: int
    faults: list[Fault] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    checks: int = 0
    seconds: float = 0.0
    summary: str = ""  # the last invariant check's

    @property
    def ok(self) -> bool:
        return not self.violations

    def takeovers(self, kind: str, *, remote: bool | None = None) -> list[float]:
        return sorted(f.takeover for f in self.faults if f.kind == kind
                      and f.takeover is not None
                      and (remote is None or (f.note == "lease ran out") == remote))

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        lines = [f"{len(self.faults)} faults ({', '.join(f'{k} {v}' for k, v in kinds.items())})"
                 f", {self.checks} invariant checks, {len(self.violations)} violations, "
                 f"{self.seconds:.0f}s (seed {self.seed})"]
        for kind in ("kill", "freeze", "cut"):
            values = self.takeovers(kind)
            if values:
                lines.append(f"  takeover after {kind}: {spread(values)}")
        lines.append(f"  last check: {self.summary}")
        lines += [f"  {v}" for v in self.violations[:30]]
        return "\n".join(lines)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "none measured"
    return (f"p50 {percentile(values, 0.5):.2f}s, p99 {percentile(values, 0.99):.2f}s, "
            f"max {max(values):.2f}s ({len(values)})")


def plan(counts: Counts, rng: random.Random) -> list[str]:
    """The faults in a shuffled order."""
    kinds = [kind for kind in KINDS for _ in range(getattr(counts, kind))]
    rng.shuffle(kinds)
    return kinds


def run_table(cluster: Cluster, counts: Counts, *, seed: int | None = None,
              check: Callable[[Cluster], Any] | None = None,
              kinds: Sequence[str] | None = None) -> TableResult:
    """Drive the faults of ``counts`` (or the sequence ``kinds``) on a started cluster, each
    followed by an invariant check (``check``, by default ``check_cluster``)."""
    from tests.faults.cluster_invariants import check_cluster

    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    result = TableResult(seed)
    checker = check or check_cluster
    t0 = time.monotonic()
    # Each kind hits the nodes in turn, from a random one: even a short table kills the
    # namespaced node (judged by its lease) as well as one of this machine.
    names = [n for n in NAMES if n in cluster.nodes]
    first = rng.randrange(len(names))
    turns: Counter[str] = Counter()
    for index, kind in enumerate(kinds if kinds is not None else plan(counts, rng)):
        turn = turns[kind]
        turns[kind] += 1
        victim = names[(first + turn) % len(names)]
        try:
            fault = _cause(cluster, kind, victim, rng, turn)
        except AssertionError as exc:  # the harness could not cause it (a node idle 10 s...)
            result.violations.append(f"fault {index} ({kind} {victim}) not caused: {exc}")
            if len(result.violations) > 50:
                break
            continue
        result.faults.append(fault)
        result.violations += [f"fault {index} ({fault.kind} {fault.node or ''}): {p}"
                              for p in fault.problems]
        report = checker(cluster)
        result.checks += 1
        result.summary = report.summary()
        result.violations += [f"after fault {index} ({fault.kind} {fault.node or ''}): {v}"
                              for v in report.violations]
        if len(result.violations) > 50:
            break
    result.seconds = time.monotonic() - t0
    return result


def _cause(cluster: Cluster, kind: str, victim: str, rng: random.Random, turn: int) -> Fault:
    """Fault ``kind`` on ``victim`` (the database's and the link's are not a node's choice;
    a skew, which restarts a node under faketime, is of a node outside the namespace), the
    ``turn``-th of its kind."""
    if kind == "kill":
        return kill_node(cluster, victim)
    if kind == "freeze":
        return freeze_node(cluster, victim)
    if kind == "stall":
        return stall_node(cluster, victim)
    if kind == "cut":
        return cut_link(cluster)
    if kind == "restart":
        return restart_database(cluster, mode=("fast", "immediate")[turn % 2])
    if kind == "skew":
        outside = [n for n in NAMES if n != NAMESPACED and n in cluster.nodes]
        return skew_node(cluster, victim if victim in outside else rng.choice(outside),
                         ("+30s", "-30s")[turn % 2])
    return overlap(cluster)

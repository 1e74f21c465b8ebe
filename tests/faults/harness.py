"""The fault scenarios of issue 6, as functions a test or ``bin/bench`` calls with a size.

    crash_point_cycle(where, point)  crash at a named point, restart, three more fires, SIGTERM
    kill_loop(where, n)              kill -9 at random moments, restart, n times

Sizes: ``sizes()`` gives the CI sizes, or the issue's full sizes with ``PIPELINE_FAULTS_FULL=1``;
each can be set on its own (``PIPELINE_FAULTS_KILLS``, ``PIPELINE_FAULTS_OUTPUT_MB``,
``PIPELINE_FAULTS_JOBS``, ``PIPELINE_FAULTS_RUNS``).

From ``bin/bench`` (the repository root on ``sys.path``)::

    from tests.faults.harness import kill_loop
    result = kill_loop(Path(tmp), 200, seed=1)
    print(result.summary())            # result.ok, result.violations, result.seconds

or as a command: ``python -m tests.faults [kill-loop N [SEED] | crash-points]``.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .driver import MARK, Driver, lasting_zombies, scan_environ, wait_for
from .invariants import Report, Served, check_invariants

CRASH_EXIT = 70


@dataclass(frozen=True)
class Sizes:
    kills: int  # kill -9 cycles
    output_mb: int  # MiB printed by one step
    jobs: int  # jobs firing at the same second
    runs: int  # sequential runs checked for zombies


def sizes() -> Sizes:
    full = os.environ.get("PIPELINE_FAULTS_FULL") == "1"

    def pick(name: str, ci: int, whole: int) -> int:
        value = os.environ.get(f"PIPELINE_FAULTS_{name}")
        return int(value) if value else (whole if full else ci)

    return Sizes(kills=pick("KILLS", 12, 200), output_mb=pick("OUTPUT_MB", 200, 2048),
                 jobs=pick("JOBS", 300, 1000), runs=pick("RUNS", 500, 500))


def served(driver: Driver) -> list[Served]:
    return [Served(life.ready_at, life.ended_at) for life in driver.lives
            if life.ready_at is not None]


# -- the jobs ------------------------------------------------------------------------------------

def every(seconds: str, steps: list[dict[str, Any]], *, schedule: dict[str, Any] | None = None,
          **more: Any) -> dict[str, Any]:
    """A job document firing every ``seconds``; ``schedule`` adds keys to its schedule."""
    return {"schedule": {"every": seconds, **(schedule or {})}, **more, "steps": steps}


def crash_jobs(driver: Driver) -> None:
    """An instant job, and a slow one whose step leaves a background child in its group.

    ``tick`` is the job whose first fire after every start must start on time (invariant 8),
    so it allows overlapping runs. Under the default ``forbid`` the product may skip that fire,
    as its policies say: a start just before a fire catches up the fire missed while down
    (``catchup: latest`` does even with the next fire coming), and when that run is still
    active at the next fire, ``forbid`` skips the next fire.
    """
    driver.job("tick", every("1s", [{"id": "t", "run": "echo tick"}], concurrency="allow"))
    driver.job("slow", every("1s", [{"id": "s", "run": "echo start; sleep 30 & sleep 1; "
                                                        "echo done"}],
                             concurrency="forbid"))


def chaos_jobs(driver: Driver) -> None:
    """Every-second jobs of every shape the kill loop should meet."""
    crash_jobs(driver)
    driver.job("fan", every("1s", [
        {"id": "a", "run": "echo a; sleep 0.5"},
        {"id": "b", "needs": ["a"], "run": "echo b; sleep 45 & sleep 0.5"},
        {"id": "c", "needs": ["a"], "exec": ["echo", "c"]},
    ], concurrency={"policy": "allow", "max_active": 3}))
    driver.job("long", every("1s", [
        {"id": "l", "run": "echo long; (sleep 40 &); sleep 2"}], concurrency="queue"))
    driver.job("items", every("2s", [
        {"id": "i", "for_each": [1, 2, 3], "max_parallel": 2,
         "run": "echo item ${{ item }}; sleep 0.2"}], schedule={"catchup": "all"}))
    driver.job("flaky", every("1s", [
        {"id": "f", "run": 'echo "try $PIPELINE_ATTEMPT"; test "$PIPELINE_ATTEMPT" -ge 2',
         "retries": {"limit": 1, "delay": "200ms"}}], schedule={"catchup": "none"}))
    driver.job("quiet", every("1s", [{"id": "q", "run": "true"}]))  # never prints: no log file


# -- crash points ------------------------------------------------------------------------------

@dataclass
class CrashOutcome:
    point: str
    driver: Driver
    count: int
    crash_code: int | None = None
    crash_lines: list[str] = field(default_factory=list)
    orphans: int = 0  # step processes still alive 5 s after the crash
    stop_code: int | None = None
    report: Report | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.report is not None and self.report.ok

    def describe(self) -> str:
        lines = [f"{self.point}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.1f}s "
                 f"({self.orphans} step processes orphaned by the crash)"]
        lines += [f"  {p}" for p in self.problems]
        if self.report is not None:
            lines += [f"  {v}" for v in self.report.violations]
            lines.append(f"  {self.report.summary()}")
        return "\n".join(lines)


def crash_point_cycle(where: Path | Driver, point: str, *, count: int = 3,
                      more_fires: int = 3) -> CrashOutcome:
    """Start with ``PIPELINE_CRASH_AT=POINT:COUNT``, wait for exit 70, restart without it,
    let ``more_fires`` fires of ``tick`` pass, SIGTERM, check the invariants.

    ``where`` is a directory for a new driver, or a driver (whose ``close()`` is then the
    caller's: the tests' fixtures do it even when the cycle fails)."""
    t0 = time.monotonic()
    d = where if isinstance(where, Driver) else Driver(where)
    outcome = CrashOutcome(point, d, count)
    try:
        _crash_and_restart(d, outcome, more_fires=more_fires)
    finally:
        outcome.seconds = time.monotonic() - t0
        if not isinstance(where, Driver):
            d.close()
    return outcome


def _crash_and_restart(d: Driver, outcome: CrashOutcome, *, more_fires: int) -> None:
    crash_jobs(d)
    d.start(crash_at=f"{outcome.point}:{outcome.count}")
    outcome.crash_code = d.wait_exit(timeout=30)
    outcome.crash_lines = d.log_lines("crash point")
    # The daemon's watchdog saw its pipe close and ends its steps' groups (SIGTERM, then
    # SIGKILL after the step grace): nothing is left for the restart to find.
    deadline = time.monotonic() + 5
    while scan_environ(MARK, [d.mark]) and time.monotonic() < deadline:
        time.sleep(0.05)
    outcome.orphans = len(scan_environ(MARK, [d.mark]))
    if outcome.crash_code != CRASH_EXIT:
        outcome.problems.append(f"the daemon exited {outcome.crash_code}, not {CRASH_EXIT}: "
                                + " | ".join(d.lives[-1].lines()[-5:]))
        return
    expected = f"pipeline: crash point {outcome.point} reached ({outcome.count}): exiting"
    if outcome.crash_lines != [expected]:
        outcome.problems.append(f"expected {expected!r} once, got {outcome.crash_lines}")
    life = d.start()
    if life.ready_at is None:
        outcome.problems.append("the restarted daemon did not serve: "
                                + " | ".join(life.lines()[-5:]))
        return
    ready = life.ready_at
    wait_for(lambda: len(d.fires_after("tick", ready)) >= more_fires, timeout=20,
             what=f"{more_fires} fires after the restart")
    zombies = lasting_zombies(life.pid)
    if zombies:
        outcome.problems.append(f"zombie children of the daemon: {zombies}")
    outcome.stop_code = d.stop()
    if outcome.stop_code != 0:
        outcome.problems.append(f"SIGTERM: exit {outcome.stop_code}")
    outcome.report = check_invariants(d.state_dir, d.jobs, served=served(d),
                                      punctual=["tick"])
    if any(r["status"] in ("queued", "running") for r in d.runs()):
        outcome.problems.append("runs still active after a clean stop")


# -- kill -9 at random moments -------------------------------------------------------------------

@dataclass
class KillLoopResult:
    n: int
    seed: int
    kills: list[float] = field(default_factory=list)  # when (s after spawn or serving)
    early: int = 0  # kills before the daemon was serving
    reports: list[Report] = field(default_factory=list)  # one per restart, then the final one
    violations: list[str] = field(default_factory=list)
    leftovers_killed: int = 0  # processes the restarts' recovery killed (from their logs)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        final = self.reports[-1] if self.reports else None
        late = list(final.lateness) if final is not None else []
        lines = [
            f"kill -9 loop: {self.n} kills (seed {self.seed}, {self.early} before the daemon "
            f"served) in {self.seconds:.1f}s; {len(self.violations)} violations",
            f"  recovery killed {self.leftovers_killed} leftover processes",
        ]
        if final is not None:
            lines.append(f"  final state: {final.summary()}")
        if late:
            late.sort()
            lines.append(f"  first fire after a restart: median {late[len(late) // 2]:.3f}s, "
                         f"max {late[-1]:.3f}s late ({len(late)} restarts judged)")
        lines += [f"  {v}" for v in self.violations[:20]]
        return "\n".join(lines)


def kill_loop(where: Path | Driver, n: int, *, seed: int | None = None,
              max_delay: float = 2.5, early: float = 0.1) -> KillLoopResult:
    """kill -9 the daemon ``n`` times at random moments, restarting it each time and checking
    the invariants after every restart; then a last start, three fires, SIGTERM, a last check.

    About ``early`` of the kills come before the daemon serves (during start-up and
    recovery); the others come 0 to ``max_delay`` seconds after it serves. ``where`` is a
    directory (everything the loop started is ended before it returns) or a driver (whose
    ``close()`` is the caller's).
    """
    t0 = time.monotonic()
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    own = not isinstance(where, Driver)
    d = where if isinstance(where, Driver) else Driver(where)
    result = KillLoopResult(n, seed)
    chaos_jobs(d)
    try:
        for cycle in range(n):
            if rng.random() < early:
                life = d.start(wait=False)
                delay = rng.uniform(0.0, 0.8)
                time.sleep(delay)
                result.early += 1
            else:
                life = d.start()
                if life.ready_at is None:
                    result.violations.append(f"cycle {cycle}: the daemon did not serve: "
                                             + " | ".join(life.lines()[-5:]))
                    break
                report = check_invariants(d.state_dir, d.jobs, served=served(d)[:-1],
                                          punctual=["tick"])
                result.reports.append(report)
                result.violations += [f"cycle {cycle}: {v}" for v in report.violations]
                delay = rng.uniform(0.0, max_delay)
                time.sleep(delay)
            result.kills.append(delay)
            if life.proc.poll() is not None:
                result.violations.append(f"cycle {cycle}: the daemon exited by itself "
                                         f"({life.proc.returncode}): "
                                         + " | ".join(life.lines()[-5:]))
            d.kill()
        life = d.start()
        if life.ready_at is None:
            result.violations.append("final start: the daemon did not serve: "
                                     + " | ".join(life.lines()[-5:]))
        else:
            ready = life.ready_at
            wait_for(lambda: len(d.fires_after("tick", ready)) >= 3, timeout=20,
                     what="three fires after the last restart")
            zombies = lasting_zombies(life.pid)
            if zombies:
                result.violations.append(f"final: zombie children of the daemon: {zombies}")
            code = d.stop()
            if code != 0:
                result.violations.append(f"final SIGTERM: exit {code}")
            report = check_invariants(d.state_dir, d.jobs, served=served(d),
                                      punctual=["tick"])
            result.reports.append(report)
            result.violations += [f"final: {v}" for v in report.violations]
            active = [r["id"] for r in d.runs() if r["status"] in ("queued", "running")]
            if active:
                result.violations.append(f"final: runs active after a clean stop: {active}")
            alive = scan_environ(MARK, [d.mark])
            if alive:
                result.violations.append(f"final: step processes alive after a clean stop: "
                                         f"{sorted(alive)}")
        result.leftovers_killed = sum(_killed(line) for line in d.log_lines("leftover"))
    finally:
        if own:
            d.close()
    result.seconds = time.monotonic() - t0
    return result


def _killed(line: str) -> int:
    # "... marked interrupted; killed 2 leftover processes"
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if word == "killed" and words[i + 1].isdigit():
            return int(words[i + 1])
    return 0


"""One run of a job: a trio nursery whose tasks are the steps.

``run_job`` walks the step DAG with ``graphlib.TopologicalSorter``: every step whose needs are
finished starts as a task in the run's nursery (steps ready together in file order), where
``steps.run_step`` evaluates its ``if`` and runs it (with retries, a timeout as a cancel scope,
``for_each`` instances under a capacity limiter). When the DAG ends the job's own ``outputs:`` are
evaluated; then the hooks run: ``on_success`` or ``on_failure``, then ``finally``. Everything
that happens is emitted as an event record; the caller decides where events go (the store, a
live view, metrics).

Stopping a run is cancelling its ``RunHandle``'s cancel scope: every running step's process
group goes through ``process.end_group`` (SIGTERM, grace, SIGKILL) on the way out.
"""

from __future__ import annotations

import graphlib
import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline import expr
from pipeline.errors import ExpressionError, PipelineError, RunnerError
from pipeline.events import (
    Event,
    RunFinished,
    RunStarted,
    StepFinished,
)
from pipeline.model import Job, Pool, RunStatus, Step, StepStatus, Trigger, thaw
from pipeline.model import utc_now as utc_now  # daemon.py imports it from here
from pipeline.redact import Redactor
from pipeline.runners import Runner, builtin_runners
from pipeline.steplog import DEFAULT_LOG_CAP
from pipeline.steps import FAILED_STATES, Once, run_step

# What a step inherits from the daemon's environment: what cron and systemd give a service, no
# more. Everything else (and every secret) must be declared in the job.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
NO_SECRETS = Redactor(())
MAX_CHAIN = 8  # jobs starting jobs (`uses: job`): how deep a chain may grow

# (run id, step instance, pool, waiting) -> holds the pool's slots for the block; calls
# ``waiting(reason)`` once if it has to wait for them.
Pools = Callable[[str, str, Pool, Callable[[str], Awaitable[None]]],
                 AbstractAsyncContextManager[None]]

Emit = Callable[[Event], Awaitable[object]]
Clock = Callable[[], datetime]


class RunHandle:
    """A live run, as its owner holds it: stop it, or hurry a stop along."""

    def __init__(self, run_id: str, job: str) -> None:
        self.run_id = run_id
        self.job = job
        self.cancel_scope = trio.CancelScope()
        self.hurry = trio.Event()  # set: skip the grace period, SIGKILL now
        self.stopped = trio.Event()
        self.hooks_scope = trio.CancelScope()  # the hooks; a kill always ends them
        # "main": the DAG runs; "hooks": hooks after it ended (a stop ends them too);
        # "cleanup": hooks after a stop (only a kill ends them)
        self.phase = "main"
        self.stop_reason: str | None = None
        # What a stopped run ends as: `cancelled` (an operator, a replacement, a parent), or
        # `interrupted` when the daemon cut it off by shutting down.
        self.stop_status = RunStatus.CANCELLED
        self.finished = trio.Event()
        self.status: RunStatus | None = None

    def stop(self, reason: str = "stopped by an operator", *,
             status: RunStatus = RunStatus.CANCELLED) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_status = status
        self.stopped.set()
        self.cancel_scope.cancel()
        if self.phase == "hooks":
            self.hooks_scope.cancel()

    def kill(self, reason: str = "killed", *,
             status: RunStatus = RunStatus.CANCELLED) -> None:
        self.hurry.set()
        self.stop(reason, status=status)
        self.hooks_scope.cancel()


@dataclass(frozen=True)
class RunResult:
    status: RunStatus
    reason: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # the job's `outputs:`


@dataclass
class _StepState:
    status: StepStatus = StepStatus.PENDING
    outputs: Mapping[str, str] = field(default_factory=dict)
    continued: bool = False  # failed, but continue_on_error
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in (StepStatus.SUCCEEDED, StepStatus.REUSED) or self.continued


def check_chain(chain: Sequence[str], job: str) -> None:
    """Refuse to start ``job`` below ``chain`` (its would-be ancestors, root first) if that
    makes a job call itself or the chain deeper than MAX_CHAIN. Raises PipelineError."""
    if job in chain:
        path = " → ".join([*chain, job])
        raise PipelineError(f"job {job!r} would start itself: {path}")
    if len(chain) >= MAX_CHAIN:
        raise PipelineError(f"a chain of jobs may be at most {MAX_CHAIN} deep: "
                            f"{' → '.join([*chain, job])}")


_inherited: tuple[Mapping[str, str], dict[str, str]] | None = None


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a step inherits from ``environ`` (INHERITED_ENV and LC_*), PATH at least.

    Filtering os.environ on every run shows in a profile of a thousand runs a second; the
    answer for the same mapping object is reused (the daemon's environment does not change).
    """
    global _inherited
    if _inherited is not None and _inherited[0] is environ:
        return _inherited[1]
    found = {k: v for k, v in environ.items() if k in INHERITED_ENV or k.startswith("LC_")}
    found.setdefault("PATH", DEFAULT_PATH)
    _inherited = (environ, found)
    return found


def resolve_secrets(job: Job, environ: Mapping[str, str]) -> dict[str, str]:
    """Read every declared secret now; RunnerError names the first that cannot be read."""
    values = {}
    for name, secret in job.secrets.items():
        if secret.env is not None:
            if secret.env not in environ:
                raise RunnerError(f"secret {name}: environment variable {secret.env} is not set")
            values[name] = environ[secret.env]
        elif secret.file is not None:
            try:
                values[name] = Path(secret.file).read_text().rstrip("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise RunnerError(f"secret {name}: cannot read {secret.file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
    return values


class Run:
    """The bookkeeping of one run while it is under way."""

    def __init__(self, job: Job, *, run_id: str, handle: RunHandle, state_dir: Path,
                 emit: Emit, params: Mapping[str, Any], secrets: Mapping[str, str],
                 trigger: Trigger, fire_time: datetime | None, runners: Mapping[str, Runner],
                 clock: Clock, log_cap: int, environ: Mapping[str, str],
                 start_job: Callable[..., Awaitable[Mapping[str, Any]]] | None,
                 reuse: Mapping[str, Mapping[str, str]], pools: Pools | None = None,
                 event: Mapping[str, Any] | None = None) -> None:
        self.job = job
        self.pools = pools  # takes a pool's slots for a step (the worker's, through the store)
        self.event = event  # what fired the run: a file, or the upstream run (`after:`)
        # `run.event` (a file: path, size, mtime) or `run.upstream` (id, job, status, outputs)
        self.fired_by: dict[str, Any] = {} if event is None else {
            "upstream" if trigger is Trigger.AFTER else "event": thaw(event)}
        self.event_env: dict[str, str] = {}
        if event is not None and trigger is Trigger.FILE and "path" in event:
            self.event_env["PIPELINE_EVENT_PATH"] = str(event["path"])
        self.reuse = reuse  # step -> outputs taken over from an earlier run (rerun --from)
        self.run_id = run_id
        self.handle = handle
        self.state_dir = state_dir
        self.emit = emit
        self.params = dict(params)
        self.secrets = dict(secrets)
        self.redactor = Redactor(self.secrets.values()) if self.secrets else NO_SECRETS
        self.trigger = trigger
        self.fire_time = fire_time
        self.runners = runners
        self.clock = clock
        self.log_cap = log_cap
        self.start_job = start_job
        self.states: dict[str, _StepState] = {s.id: _StepState() for s in job.all_steps()}
        self.deadline = trio.CancelScope()  # replaced by the run's timeout scope
        self.cancelled = False
        self.hook_ids = {s.id for s in (*job.on_success, *job.on_failure, *job.finally_)}
        self.job_env: dict[str, str] = {}
        self.base_env = inherited_env(environ)
        self.outputs: dict[str, str] = {}  # the job's `outputs:`, once the DAG has ended

    # -- expressions -------------------------------------------------------------------

    def context(self, step: Step | None = None, item: Any = None,
                ancestors: Sequence[str] = (), env: Mapping[str, str] | None = None,
                ) -> dict[str, Any]:
        """The expression context of ``step``.

        ``success()`` looks at the step's own needs (transitively); ``failure()`` also looks at
        the main steps when ``step`` is a hook, so ``if: failure()`` in ``finally`` works while
        an ``on_failure`` step still runs by default.
        """
        steps = {}
        for sid, st in self.states.items():
            entry: dict[str, Any] = {"status": str(st.status), "outputs": dict(st.outputs)}
            if st.items:
                entry["items"] = st.items
            steps[sid] = entry
        states = [self.states[a] for a in ancestors]
        watched = states
        hook = step is not None and step.id in self.hook_ids
        if hook:
            watched = [*states, *(self.states[s.id] for s in self.job.steps)]
        ctx: dict[str, Any] = {
            "params": self.params,
            "env": dict(env if env is not None else self.job_env),
            "secrets": self.secrets,
            "steps": steps,
            "run": {"id": self.run_id, "trigger": str(self.trigger),
                    "fire_time": self.fire_time.isoformat() if self.fire_time else "",
                    **self.fired_by},
            "job": {"name": self.job.name},
            # A hook's success() is about its own needs: a stopped run still cleans up.
            "success": lambda: (not self.stopping or hook) and all(s.ok for s in states),
            "failure": lambda: any(s.status in FAILED_STATES and not s.continued
                                   for s in watched),
            "always": lambda: True,
            "cancelled": lambda: self.stopping or self.run_timed_out,
        }
        if item is not None:
            ctx["item"] = item
        return ctx

    # -- the graph ---------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.handle.cancel_scope.cancel_called

    @property
    def run_timed_out(self) -> bool:
        return self.deadline.cancel_called

    async def run_graph(self, steps: Sequence[Step]) -> None:
        """Run ``steps`` as a DAG: each starts when its needs are finished."""
        if not steps:
            return
        if len(steps) == 1:  # most jobs: no graph to sort
            await run_step(self, steps[0], [])
            return
        by_id = {s.id: s for s in steps}
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
            {s.id: [n for n in s.needs if n in by_id] for s in steps})
        sorter.prepare()
        ancestors = _ancestors(steps)
        finished_send, finished_receive = trio.open_memory_channel[str](math.inf)
        async with trio.open_nursery() as nursery:
            while sorter.is_active():
                # Steps that are ready together start in file order: each is started (or
                # skipped) before the next begins. start_soon alone would leave the order to
                # trio's scheduler, which shuffles each batch on purpose.
                for sid in sorter.get_ready():
                    await nursery.start(self.step_task, by_id[sid], ancestors[sid],
                                        finished_send)
                sorter.done(await finished_receive.receive())

    async def step_task(self, step: Step, ancestors: Sequence[str],
                        finished: trio.MemorySendChannel[str],
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = Once(task_status.started)
        try:
            await run_step(self, step, ancestors, started)
        finally:
            started()
            finished.send_nowait(step.id)

    async def finish_unstarted(self, step_id: str, status: StepStatus, error: str) -> None:
        now = self.clock()
        with trio.CancelScope(shield=True):
            await self.emit(StepFinished(self.run_id, step_id, status, now,
                                         error=self.redactor.text(error), started_at=None))

    # -- the whole run ------------------------------------------------------------------

    async def run(self) -> RunResult:
        """The main DAG under the stop scope and the run timeout; then the hooks.

        Hooks run outside the stop scope, so ``finally`` (and ``if: cancelled()``) steps still
        clean up after a stop, a Ctrl-C or a shutdown; only a kill (a second signal) ends them
        then. After a stop, ``on_success``/``on_failure`` are skipped and ``finally`` runs.
        """
        job = self.job
        try:
            ctx = self.context()
            self.job_env = {k: expr.text_of(expr.render_value(v, ctx)) for k, v in job.env.items()}
        except ExpressionError as exc:
            return await self.fail_all(self.redactor.text(f"env: {exc}"))
        reason: str | None = None
        with self.handle.cancel_scope:
            if job.timeout:
                self.deadline = trio.move_on_after(job.timeout)
            with self.deadline if job.timeout else nullcontext():
                await self.run_graph(job.steps)
        stopped = self.handle.cancel_scope.cancelled_caught
        if self.deadline.cancelled_caught:
            reason = f"run timed out after {job.timeout:g}s"
        failed = [s.id for s in job.steps if self.failed(s.id)]
        if failed and reason is None:
            reason = f"step{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}"
        ok = not failed and not self.run_timed_out and not stopped
        problem = self.evaluate_outputs()
        if problem and ok:
            ok, reason = False, problem
        if stopped:
            self.cancelled = True
            reason = self.handle.stop_reason or "cancelled"
        await self.record_unstarted(job.steps, StepStatus.CANCELLED,
                                    reason if reason and (stopped or self.run_timed_out)
                                    else "not started")
        self.handle.phase = "cleanup" if stopped else "hooks"
        if job.on_success or job.on_failure or job.finally_:
            with self.handle.hooks_scope:
                if not stopped:
                    await self.run_graph(job.on_success if ok else job.on_failure)
                await self.run_graph(job.finally_)
        hooks = (*job.on_success, *job.on_failure, *job.finally_)
        if self.handle.hooks_scope.cancelled_caught:
            self.cancelled = True
            reason = self.handle.stop_reason or "cancelled"
            await self.record_unstarted(hooks, StepStatus.CANCELLED, reason)
            return RunResult(self.handle.stop_status, reason)
        await self.record_unstarted(hooks, StepStatus.SKIPPED,
                                    "run cancelled" if stopped else "hook not needed")
        if stopped:
            return RunResult(self.handle.stop_status, reason)
        hook_failed = [s.id for s in hooks if self.failed(s.id)]
        if ok and hook_failed:
            return RunResult(RunStatus.FAILED, f"hook failed: {', '.join(hook_failed)}")
        return RunResult(RunStatus.SUCCEEDED if ok else RunStatus.FAILED, reason)

    def evaluate_outputs(self) -> str | None:
        """Set the job's own ``outputs:`` from the steps' outputs; the first problem, if any.

        Evaluated when the DAG ends and before the hooks, so that an output that cannot be
        had fails the run and ``on_failure`` runs for it, and the outputs are the DAG's
        results, which no hook can change. In a run that failed or stopped anyway, an output
        that cannot be evaluated is left out.
        """
        if not self.job.outputs:
            return None
        ctx = self.context()
        problem = None
        for name, template in self.job.outputs.items():
            try:
                value = expr.text_of(expr.render_value(template, ctx))
            except ExpressionError as exc:
                problem = problem or self.redactor.text(f"output {name}: {exc}")
                continue
            self.outputs[name] = self.redactor.text(value)
        return problem

    def failed(self, step_id: str) -> bool:
        state = self.states[step_id]
        return state.status in FAILED_STATES and not state.continued

    async def record_unstarted(self, steps: Sequence[Step], status: StepStatus,
                               reason: str) -> None:
        """Record each of ``steps`` that never got to run, so the run's step list is complete."""
        for step in steps:
            state = self.states[step.id]
            if state.status is StepStatus.PENDING:
                state.status = status
                await self.finish_unstarted(step.id, status, reason)

    async def fail_all(self, reason: str) -> RunResult:
        for step in self.job.all_steps():
            self.states[step.id].status = StepStatus.SKIPPED
            await self.finish_unstarted(step.id, StepStatus.SKIPPED, reason)
        return RunResult(RunStatus.FAILED, reason)



def _ancestors(steps: Sequence[Step]) -> dict[str, list[str]]:
    """Every step's transitive needs (within ``steps``), nearest first."""
    by_id = {s.id: s for s in steps}
    memo: dict[str, list[str]] = {}

    def walk(sid: str) -> list[str]:
        if sid not in memo:
            found: list[str] = []
            for need in by_id[sid].needs:
                if need in by_id:
                    for a in [need, *walk(need)]:
                        if a not in found:
                            found.append(a)
            memo[sid] = found
        return memo[sid]

    return {sid: walk(sid) for sid in by_id}


async def run_job(
    job: Job,
    *,
    run_id: str,
    state_dir: Path,
    emit: Emit,
    params: Mapping[str, Any] | None = None,
    trigger: Trigger = Trigger.MANUAL,
    fire_time: datetime | None = None,
    handle: RunHandle | None = None,
    runners: Mapping[str, Runner] | None = None,
    clock: Clock = utc_now,
    log_cap: int = DEFAULT_LOG_CAP,
    environ: Mapping[str, str] | None = None,
    start_job: Callable[..., Awaitable[Mapping[str, Any]]] | None = None,
    started_at: datetime | None = None,
    attempt: int | None = None,
    reuse: Mapping[str, Mapping[str, str]] | None = None,
    pools: Pools | None = None,
    event: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run ``job`` once, emitting RunStarted ... RunFinished, and return how it ended, with
    the job's own ``outputs:`` (secrets masked).

    The run must already be recorded (``RunQueued``) by the caller, which also resolved and
    checked ``params``. Secrets are read from ``environ`` (default: this process's
    environment) at start. Cancelling ``handle.cancel_scope`` (``handle.stop()``) stops the
    run: the result is ``cancelled``. Step failures, timeouts and expression errors never
    raise; they are recorded on their step. ``started_at``: when the caller started it (the
    scheduler, as it made the run's task); default now.
    """
    started = started_at or clock()
    environ = os.environ if environ is None else environ
    handle = handle or RunHandle(run_id, job.name)
    with logger.contextualize(job=job.name, run=run_id):
        await emit(RunStarted(run_id, started))
        try:
            secrets = resolve_secrets(job, environ)
        except RunnerError as exc:
            secrets = {}
            failure: str | None = str(exc)
        else:
            failure = None
        run = Run(job, run_id=run_id, handle=handle, state_dir=state_dir, emit=emit,
                   params=params or {}, secrets=secrets, trigger=trigger, fire_time=fire_time,
                   runners=runners if runners is not None else builtin_runners(),
                   clock=clock, log_cap=log_cap, environ=environ, start_job=start_job,
                   reuse=reuse or {}, pools=pools, event=event)
        # Cancelled from outside without a stop (the daemon's nursery is going away), the run
        # still gets a final record.
        outcome = RunResult(RunStatus.CANCELLED, "cancelled")
        try:
            if failure is not None:
                outcome = await run.fail_all(failure)
            else:
                outcome = await run.run()
        except Exception as exc:  # a bug ends this run, never the daemon (Cancelled goes on)
            logger.opt(exception=exc).error("run {} crashed", run_id)
            outcome = RunResult(RunStatus.FAILED,
                                f"internal error: {type(exc).__name__}: {exc}")
        finally:
            outcome = RunResult(outcome.status, run.redactor.text(outcome.reason)
                                if outcome.reason else None, dict(run.outputs))
            with trio.CancelScope(shield=True):
                await emit(RunFinished(run_id, outcome.status, clock(), outcome.reason,
                                       attempt=attempt, outputs=outcome.outputs))
            handle.status = outcome.status
            handle.finished.set()
        # A success is routine (an every-second job would fill the log); the rest is news.
        logger.log("DEBUG" if outcome.status is RunStatus.SUCCEEDED else "INFO", "run {} {}{}",
                   run_id, outcome.status, f" ({outcome.reason})" if outcome.reason else "")
        return outcome

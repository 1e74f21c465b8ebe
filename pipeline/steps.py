"""One step of a run: whether it runs at all (its ``if``, a reused step), its ``for_each``
items, and its attempts, each with its environment, its timeout, and its process (``run``,
``exec``) or its runner (``uses``); the retries between them; its log and outputs.

The engine (``pipeline.engine``) walks the graph and calls ``run_step`` for each step it
starts, with the run's bookkeeping (``engine.Run``). ``attempts`` runs a step (or one
``for_each`` item): it records the step's start, runs attempts until one succeeds, the retries
run out or the run stops, writes a ``[pipeline]`` line to the log for each attempt that did not
succeed, and records how the step ended. A process runs in its own process group through
``process.run_group``, so a timeout, a stop and a shutdown all end it the same way.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from pipeline import expr, process, scratch
from pipeline.errors import ExpressionError, RunnerError
from pipeline.events import StepFinished, StepRetrying, StepSpawned, StepStarted, StepWaiting
from pipeline.faults import crash_point
from pipeline.model import Step, StepKind, StepStatus, thaw
from pipeline.runners import StepContext
from pipeline.statedir import log_relpath
from pipeline.steplog import StepLog, parse_outputs

if TYPE_CHECKING:
    from pipeline.engine import Run

OUTPUT_FILE_CAP = 1024 * 1024
FAILED_STATES = (StepStatus.FAILED, StepStatus.TIMED_OUT)


@functools.cache  # a PATH search per step showed in the profile; the daemon's PATH is fixed
def default_shell() -> tuple[str, ...]:
    """``bash -e -o pipefail -c``, or ``sh -e -c`` where bash is missing."""
    bash = shutil.which("bash")
    return (bash, "-e", "-o", "pipefail", "-c") if bash else ("/bin/sh", "-e", "-c")


@dataclass
class Attempt:
    """How one attempt of a step ended (and, once the retries are done, the step)."""

    status: StepStatus
    exit: process.Exit | None = None
    error: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    retryable: bool = True


# -- a step: its condition, its reuse, its items ------------------------------------------


async def run_step(run: Run, step: Step, ancestors: Sequence[str],
                   started: Callable[[], object] = lambda: None) -> None:
    """Run ``step``; ``started`` is called once its start (or skip) is recorded."""
    state = run.states[step.id]
    reused = run.reuse.get(step.id)
    if reused is not None:
        # `rerun --from`: this step's outputs are the earlier run's; it does not run.
        state.status, state.outputs = StepStatus.REUSED, dict(reused)
        with trio.CancelScope(shield=True):
            await run.emit(StepFinished(run.run_id, step.id, StepStatus.REUSED,
                                        run.clock(), outputs=dict(reused),
                                        started_at=None, no_log=True))
        started()
        return
    with logger.contextualize(step=step.id):
        try:
            if step.if_ == "success()" and step.id not in run.hook_ids:
                # The default condition, without building a context and asking jinja.
                go = not run.stopping and all(run.states[a].ok for a in ancestors)
            else:
                go = expr.evaluate(step.if_, run.context(step, ancestors=ancestors))
        except ExpressionError as exc:
            await run.finish_unstarted(step.id, StepStatus.FAILED, f"if: {exc}")
            state.status = StepStatus.FAILED
            return
        if not go:
            why = ("a needed step did not succeed" if step.if_ == "success()"
                   else f"condition is false: {step.if_}")
            state.status = StepStatus.SKIPPED
            await run.finish_unstarted(step.id, StepStatus.SKIPPED, why)
            return
        if step.for_each is None:
            result = await attempts(run, step, step.id, None, ancestors, started)
        else:
            result = await for_each(run, step, ancestors, started)
        state.status = result.status
        state.outputs = result.outputs
        state.continued = result.status in FAILED_STATES and step.continue_on_error


async def for_each(run: Run, step: Step, ancestors: Sequence[str],
                   started: Callable[[], object]) -> Attempt:
    """A ``for_each`` step: each item as its own attempts (``STEP.INDEX``), up to
    ``max_parallel`` at once, started in item order."""
    assert step.for_each is not None
    started_at = run.clock()
    try:
        items = step.for_each
        if isinstance(items, str):
            items = expr.evaluate(items, run.context(step, ancestors=ancestors))
        if not isinstance(items, list | tuple):
            raise ExpressionError(f"for_each must give a list, got {type(items).__name__}")
    except ExpressionError as exc:
        await run.finish_unstarted(step.id, StepStatus.FAILED, f"for_each: {exc}")
        return Attempt(StepStatus.FAILED, error=str(exc))
    await run.emit(StepStarted(run.run_id, step.id, 1, started_at, ""))
    started()
    limiter = trio.CapacityLimiter(step.max_parallel or max(len(items), 1))
    results: list[Attempt | None] = [None] * len(items)

    async def one(index: int, item: Any,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        begun = Once(task_status.started)
        try:
            results[index] = await attempts(run, step, f"{step.id}.{index}", item,
                                            ancestors, begun)
        finally:
            begun()
            limiter.release_on_behalf_of(index)

    async with trio.open_nursery() as nursery:
        for index, item in enumerate(items):
            # Items start in their order, each as soon as a place is free.
            await limiter.acquire_on_behalf_of(index)
            await nursery.start(one, index, item)
    done = [r for r in results if r is not None]
    run.states[step.id].items = [
        {"item": item, "status": str(r.status), "outputs": dict(r.outputs)}
        for item, r in zip(items, done, strict=True)]
    failed = [i for i, r in enumerate(done) if r.status is not StepStatus.SUCCEEDED]
    status = StepStatus.SUCCEEDED
    error = None
    if failed:
        status = StepStatus.FAILED
        error = f"{len(failed)} of {len(done)} items failed (first: item {failed[0]})"
    outputs = gathered(run, done)
    await run.emit(StepFinished(run.run_id, step.id, status, run.clock(), attempt=1,
                                error=error, outputs=outputs))
    return Attempt(status, error=error, outputs=outputs)


def gathered(run: Run, results: Sequence[Attempt]) -> dict[str, str]:
    """A for_each step's outputs: each key any item wrote, as the JSON list of the items'
    values in item order (null where an item did not write it), CONTRACT §2."""
    keys = dict.fromkeys(key for r in results for key in r.outputs)
    return {key: run.redactor.text(json.dumps([r.outputs.get(key) for r in results],
                                              ensure_ascii=False))
            for key in keys}


# -- one step (or item), with retries ---------------------------------------------------


async def attempts(run: Run, step: Step, instance: str, item: Any,
                   ancestors: Sequence[str],
                   started: Callable[[], object] = lambda: None) -> Attempt:
    """Run ``step`` (or one item of it), first taking its pool's slots if it names one:
    meanwhile it is ``pending``, ``waiting for pool NAME`` (and counts as started for its
    DAG: the steps after it in file order may start)."""
    if step.pool is None or run.pools is None:
        return await _attempts(run, step, instance, item, ancestors, started)

    async def waiting(reason: str) -> None:
        await run.emit(StepWaiting(run.run_id, instance, reason, run.clock()))
        started()

    async with run.pools(run.run_id, instance, step.pool, waiting):
        return await _attempts(run, step, instance, item, ancestors, started)


async def _attempts(run: Run, step: Step, instance: str, item: Any,
                    ancestors: Sequence[str],
                    started: Callable[[], object] = lambda: None) -> Attempt:
    """Run ``step`` (or one item of it) with its retries; ``started`` is called once its
    start is recorded. Its log gets one ``[pipeline]`` marker per attempt that did not
    succeed (``exit status 7``, ``timed out after 5s``, ``... ; retrying in 10s``), or
    ``stopped: REASON``, always after everything the step's processes wrote."""
    policy = step.retries or run.job.retries
    relpath = log_relpath(run.job.name, run.run_id, instance)
    log = StepLog(run.state_dir, relpath, cap=run.log_cap, redactor=run.redactor)
    attempt = 1
    result = Attempt(StepStatus.CANCELLED, error="cancelled before it started")
    ended = False
    try:
        shown = None if step.for_each is None else run.redactor.text(
            json.dumps(item, ensure_ascii=False, default=str))
        await run.emit(StepStarted(run.run_id, instance, attempt, run.clock(), relpath,
                                   item=shown))
        started()
        while True:
            if attempt > 1:
                # The time lets the run page draw each attempt (the store keeps a step's
                # first start and last end only).
                log.line(f"[pipeline] attempt {attempt} of {policy.limit + 1} at "
                         f"{run.clock().isoformat(timespec='milliseconds')}")
            result = await run_attempt(run, step, instance, item, attempt, ancestors, log)
            if result.error:  # masked here, once: it goes to the log, state and answers
                result.error = run.redactor.text(result.error)
            again = (result.status in FAILED_STATES and result.retryable
                     and attempt <= policy.limit)
            delay = policy.delay_before(attempt + 1) if again else 0.0
            if result.status is not StepStatus.SUCCEEDED and result.error:
                log.line(f"[pipeline] {result.error}"
                         + (f"; retrying in {delay:g}s" if again else ""))
            if not again:
                break
            await run.emit(StepRetrying(run.run_id, instance, attempt, delay,
                                        result.error))
            await trio.sleep(delay)
            attempt += 1
        ended = True
    finally:
        # Not ended: cancelled (a stop, the run's timeout), which may reach us wrapped in
        # an exception group from a nursery below, so it is told by this flag.
        if not ended:
            result = Attempt(StepStatus.CANCELLED,
                             error=run.handle.stop_reason or "run cancelled")
            if run.run_timed_out and run.handle.stop_reason is None:
                result.error = "run timed out"
            log.line(f"[pipeline] stopped: {result.error}")
            if instance == step.id:  # recorded below: not one for record_unstarted
                run.states[step.id].status = StepStatus.CANCELLED
        log.close()
        exit = result.exit
        # Shielded only when cancelled: a cancel scope costs more than the rest of a
        # simple step's bookkeeping, and on the normal path nothing can cancel this emit.
        with trio.CancelScope(shield=True) if not ended else nullcontext():
            await run.emit(StepFinished(
                run.run_id, instance, result.status, run.clock(), attempt=attempt,
                exit_code=exit.exit_code if exit else None,
                signal=exit.signal if exit else None,
                error=result.error, outputs=result.outputs, no_log=not log.exists))
    return result


async def run_attempt(run: Run, step: Step, instance: str, item: Any, attempt: int,
                      ancestors: Sequence[str], log: StepLog) -> Attempt:
    """One attempt: the step's environment and working directory rendered, its process
    spawned (or its runner called) under its timeout, its outputs read."""
    # Building the context costs more than a simple step's whole run: only when needed.
    ctx = (run.context(step, item=item, ancestors=ancestors) if _uses_expressions(step)
           else {})
    try:
        step_env = {k: expr.text_of(expr.render_value(v, ctx)) for k, v in step.env.items()}
        env_view = {**run.job_env, **step_env}
        ctx["env"] = env_view
        cwd = expr.render(step.cwd, ctx) if step.cwd else None
    except ExpressionError as exc:
        return Attempt(StepStatus.FAILED, error=str(exc), retryable=False)
    env = {**run.base_env, **env_view, **run.secrets,
           "PIPELINE_JOB": run.job.name, "PIPELINE_RUN_ID": run.run_id,
           "PIPELINE_STEP": instance, "PIPELINE_ATTEMPT": str(attempt),
           "PIPELINE_FIRE_TIME": run.fire_time.isoformat() if run.fire_time else "",
           **run.event_env}
    output_file = None
    if step.kind is not StepKind.USES:  # runners return their outputs instead
        try:
            output_file = scratch.output_path(run.run_id)
        except OSError as exc:
            error = f"cannot make $PIPELINE_OUTPUT: {exc.strerror or exc}"
            return Attempt(StepStatus.FAILED, error=error)
        env["PIPELINE_OUTPUT"] = str(output_file)
    deadline = trio.move_on_after(step.timeout) if step.timeout else None
    try:
        with deadline or nullcontext():
            if step.kind is StepKind.USES:
                result = await call_runner(run, step, instance, ctx, env, attempt, log, cwd)
            else:
                result = await spawn(run, step, instance, ctx, env, cwd, log)
        if deadline is not None and deadline.cancelled_caught:
            result = Attempt(StepStatus.TIMED_OUT, error=f"timed out after {step.timeout:g}s")
        text = scratch.read_output(output_file, OUTPUT_FILE_CAP) if output_file else ""
    finally:
        if output_file is not None:
            scratch.discard(output_file)
    outputs, warnings = parse_outputs(text)
    for warning in warnings:
        log.line(f"[pipeline] {warning}")
    result.outputs = {**outputs, **result.outputs}
    if run.redactor:
        result.outputs = {k: run.redactor.text(v) for k, v in result.outputs.items()}
    return result


async def spawn(run: Run, step: Step, instance: str, ctx: Mapping[str, Any],
                env: Mapping[str, str], cwd: str | None, log: StepLog) -> Attempt:
    try:
        if step.kind is StepKind.RUN:
            assert step.run is not None
            script = expr.render_script(step.run, ctx)
            argv = [*(step.shell or default_shell()), script]
        else:
            argv = [expr.render(a, ctx) for a in step.exec]
    except ExpressionError as exc:
        return Attempt(StepStatus.FAILED, error=str(exc), retryable=False)

    async def spawned(pid: int) -> None:
        await run.emit(StepSpawned(run.run_id, instance, pid, pid))
        crash_point("step-spawned")

    crash_point("step-spawning")
    try:
        exit = await process.run_group(argv, env=env, cwd=cwd, output=log.output,
                                       grace=step.grace, spawned=spawned,
                                       hurry=run.handle.hurry)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
        return Attempt(StepStatus.FAILED, error=process.start_failure(exc, argv[0], cwd))
    log.flush_output()
    crash_point("step-exited")
    if exit.ok:
        return Attempt(StepStatus.SUCCEEDED, exit=exit)
    return Attempt(StepStatus.FAILED, exit=exit, error=exit.describe())


async def call_runner(run: Run, step: Step, instance: str, ctx: Mapping[str, Any],
                      env: Mapping[str, str], attempt: int, log: StepLog,
                      cwd: str | None) -> Attempt:
    assert step.uses is not None
    runner = run.runners.get(step.uses)
    if runner is None:
        return Attempt(StepStatus.FAILED, error=f"unknown runner {step.uses!r}",
                       retryable=False)
    try:
        args = expr.render_value(step.with_, ctx)
    except ExpressionError as exc:
        return Attempt(StepStatus.FAILED, error=str(exc), retryable=False)
    step_ctx = StepContext(job=run.job.name, run_id=run.run_id, step_id=instance,
                           attempt=attempt, env=env, log=log.line,
                           state_dir=run.state_dir, start_job=run.start_job, cwd=cwd,
                           job_file=run.job.file, grace=step.grace,
                           hurry=run.handle.hurry)
    try:
        outputs = await runner.run(args, step_ctx)
    except (RunnerError, ExpressionError) as exc:
        return Attempt(StepStatus.FAILED, error=str(exc))
    except Exception as exc:  # a runner's bug fails its step, never the run
        logger.opt(exception=exc).error("runner {} crashed", step.uses)
        error = f"runner {step.uses} crashed: {type(exc).__name__}: {exc}"
        return Attempt(StepStatus.FAILED, error=error)
    return Attempt(StepStatus.SUCCEEDED,
                   outputs={str(k): expr.text_of(v) for k, v in (outputs or {}).items()})


class Once:
    """Calls ``function`` the first time it is called, never again: a task's
    ``task_status.started`` may be reached on the normal path and again on the way out."""

    def __init__(self, function: Callable[[], object]) -> None:
        self.function: Callable[[], object] | None = function

    def __call__(self) -> None:
        function, self.function = self.function, None
        if function is not None:
            function()


_expressive: dict[int, tuple[Step, bool]] = {}


def _uses_expressions(step: Step) -> bool:
    """Whether anything ``step`` renders holds a ``${{ }}`` (asked once per step object)."""
    known = _expressive.get(id(step))
    if known is None or known[0] is not step:
        found = "${{" in json.dumps(
            [step.run, step.exec, thaw(step.with_), thaw(step.env), step.cwd], default=str)
        if len(_expressive) > 65536:
            _expressive.clear()
        known = _expressive[id(step)] = (step, found)
    return known[1]

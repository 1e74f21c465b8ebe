"""``uses: job`` — start another job as a child run, and by default wait for it.

Its outputs are the child run's id and status, and each of the child job's own outputs (its
top-level ``outputs:``) beside them.

The step only asks: ``ctx.start_job`` (given by the daemon or ``pipeline run``) records the
child run with its parent, enforces the depth limit that stops a job from starting itself
forever, and runs it under the child job's own rules. Its refusals come back as
``PipelineError`` and fail the step with their message. Cancelling the step (timeout, stop)
cancels the wait; what happens to a child still running is ``start_job``'s decision.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline.errors import PipelineError, RunnerError
from pipeline.runners import StepContext
from pipeline.runners.args import bool_arg, mapping_arg


async def run(args: Mapping[str, Any], ctx: StepContext) -> dict[str, Any]:
    name = args.get("job")
    if not isinstance(name, str) or not name:
        raise RunnerError(f"job must be a job's name, not {name!r}")
    params = dict(mapping_arg(args, "params"))
    wait = bool_arg(args, "wait", True)
    if ctx.start_job is None:
        raise RunnerError("this run cannot start other jobs (no daemon)")
    try:
        child = await ctx.start_job(name, params, parent_run_id=ctx.run_id, wait=wait)
    except PipelineError as exc:
        raise RunnerError(f"cannot start job {name}: {exc}") from None
    run_id, status = str(child.get("run_id", "")), str(child.get("status", ""))
    ctx.log(f"[job] child run {run_id} of job {name}: {status}")
    outputs: dict[str, Any] = {"run_id": run_id, "status": status}
    if not wait:
        return outputs
    if status != "succeeded":
        reason = child.get("reason")
        raise RunnerError(f"child run {run_id} of job {name} {_ended(status)}"
                          + (f": {reason}" if reason else ""))
    # The child job's own `outputs:` (CONTRACT §3): each beside run_id and status, and all of
    # them as JSON under `outputs` (unless the child names one of its own so).
    child_outputs = {str(k): v for k, v in (child.get("outputs") or {}).items()}
    outputs["outputs"] = json.dumps(_plain(child_outputs))
    for key, value in child_outputs.items():
        if key not in ("run_id", "status"):
            outputs[key] = value if isinstance(value, str) else json.dumps(_plain(value))
    return outputs


def _ended(status: str) -> str:
    return {"cancelled": "was cancelled", "skipped": "was skipped",
            "interrupted": "was interrupted", "failed": "failed"}.get(status, f"ended {status}")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

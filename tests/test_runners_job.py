"""``uses: job`` with a plain-function ``start_job`` standing in for the daemon."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline.errors import NotFound, RunnerError
from pipeline.runners import StepContext
from pipeline.runners import job as job_runner

PARENT = "20260101T000000-00000000"


class FakeDaemon:
    """Records each request and answers with the given child run."""

    def __init__(self, answer: Mapping[str, Any] | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    async def start_job(self, job: str, params: Mapping[str, Any],
                        **options: Any) -> Mapping[str, Any]:
        self.calls.append((job, dict(params), options))
        await trio.lowlevel.checkpoint()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def context(daemon: FakeDaemon | None, log: list[str]) -> StepContext:
    return StepContext(job="parent", run_id=PARENT, step_id="s", attempt=1, env={},
                       log=log.append, state_dir=Path("/nonexistent"),
                       start_job=daemon.start_job if daemon else None)


async def call(args: Mapping[str, Any], daemon: FakeDaemon | None,
               log: list[str] | None = None) -> Mapping[str, Any]:
    return await job_runner.run(args, context(daemon, log if log is not None else []))


async def test_waits_for_the_child_and_takes_its_outputs() -> None:
    daemon = FakeDaemon({"run_id": "C1", "status": "succeeded",
                         "outputs": {"build": {"version": "1.2"}, "greeting": "hi x"}})
    log: list[str] = []
    out = await call({"job": "child", "params": {"n": 3}}, daemon, log)
    assert daemon.calls == [("child", {"n": 3}, {"parent_run_id": PARENT, "wait": True})]
    assert out["run_id"] == "C1" and out["status"] == "succeeded"
    assert json.loads(out["outputs"]) == {"build": {"version": "1.2"}, "greeting": "hi x"}
    assert out["greeting"] == "hi x"  # each of the child's outputs, beside run_id and status
    assert json.loads(out["build"]) == {"version": "1.2"}
    assert log == ["[job] child run C1 of job child: succeeded"]


async def test_without_waiting() -> None:
    daemon = FakeDaemon({"run_id": "C2", "status": "queued"})
    out = await call({"job": "child", "wait": False}, daemon)
    assert out == {"run_id": "C2", "status": "queued"}
    assert daemon.calls[0][2] == {"parent_run_id": PARENT, "wait": False}


@pytest.mark.parametrize(("answer", "message"), [
    ({"run_id": "C3", "status": "failed"}, "child run C3 of job child failed"),
    ({"run_id": "C3", "status": "failed", "reason": "step failed: build"},
     "child run C3 of job child failed: step failed: build"),
    ({"run_id": "C3", "status": "cancelled"}, "child run C3 of job child was cancelled"),
    ({"run_id": "C3", "status": "skipped", "reason": "a run is already active"},
     "child run C3 of job child was skipped: a run is already active"),
])
async def test_a_child_that_did_not_succeed_fails_the_step(answer: Mapping[str, Any],
                                                           message: str) -> None:
    with pytest.raises(RunnerError) as info:
        await call({"job": "child"}, FakeDaemon(answer))
    assert str(info.value) == message


async def test_refusals_are_surfaced() -> None:
    with pytest.raises(RunnerError, match=r"^cannot start job child: job chain too deep"):
        await call({"job": "child"},
                   FakeDaemon(RunnerError("job chain too deep (parent -> child -> child)")))
    with pytest.raises(RunnerError, match=r"^cannot start job nope: unknown job nope$"):
        await call({"job": "nope"}, FakeDaemon(NotFound("unknown job nope")))


async def test_without_a_daemon() -> None:
    with pytest.raises(RunnerError, match=r"^this run cannot start other jobs \(no daemon\)$"):
        await call({"job": "child"}, None)


@pytest.mark.parametrize(("args", "message"), [
    ({}, "job must be a job's name"),
    ({"job": "child", "params": [1]}, "params must be a mapping"),
    ({"job": "child", "wait": "maybe"}, "wait must be true or false"),
])
async def test_bad_arguments(args: Mapping[str, Any], message: str) -> None:
    with pytest.raises(RunnerError, match=message):
        await call(args, FakeDaemon({"run_id": "C", "status": "succeeded"}))

"""The last stage of loading a job: a document that passed every check becomes a frozen ``Job``.

Every function here reads a document that passed all the checks: values are known to be there
and well-formed, so nothing is checked twice. The notations inside strings are read with
``pipeline.notation``, parameters with ``pipeline.params``; a key the document leaves out gets
the model's default. Every mapping and list is frozen, so that no raw dict travels further.
``job_from_record`` builds the same job again from the document a run's record keeps.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

from pipeline import params, schedules, yamlsafe
from pipeline.model import (
    EMPTY,
    CircuitBreaker,
    Concurrency,
    Job,
    Policy,
    RetryPolicy,
    Step,
    StepKind,
    thaw,
)
from pipeline.notation import parse_duration, unwrap
from pipeline.settings import history, notify_targets, pool, retry_policy, secret_refs
from pipeline.yamlsafe import JsonPath, Mark

_retries = retry_policy


def _freeze(value: Any) -> Any:
    """``model.freeze`` for the plain dicts and lists we construct, without its ABC checks
    (which cost a third of building a job); the result is the same."""
    kind = value.__class__
    if kind is dict:
        return MappingProxyType({k: v if v.__class__ not in _CONTAINERS else _freeze(v)
                                 for k, v in value.items()})
    if kind is list:
        return tuple([v if v.__class__ not in _CONTAINERS else _freeze(v) for v in value])
    return value


_CONTAINERS = frozenset({dict, list})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _env(value: Any) -> Mapping[str, str]:
    return _freeze({k: _text(v) for k, v in value.items()}) if value else EMPTY


def _int(value: Any) -> Any:
    """JSON Schema's integers include 2.0; the model wants 2."""
    return int(value) if isinstance(value, float) else value


def _step(raw: dict[str, Any], frozen: Mapping[str, Any], line: int) -> Step:
    kind = StepKind.RUN if "run" in raw else StepKind.EXEC if "exec" in raw else StepKind.USES
    needs = raw.get("needs", ())
    shell = raw.get("shell")
    for_each = raw.get("for_each")
    if_ = raw.get("if", Step.if_)
    return Step(
        id=raw["id"], kind=kind, line=line, name=raw.get("name"), run=raw.get("run"),
        exec=tuple(_text(a) for a in raw.get("exec", ())), uses=raw.get("uses"),
        with_=frozen.get("with", EMPTY),
        needs=(needs,) if isinstance(needs, str) else tuple(needs),
        if_=_text(if_) if isinstance(if_, bool) else unwrap(if_),
        env=_env(raw.get("env")), cwd=raw.get("cwd"),
        shell=None if shell is None else tuple(shlex.split(shell) if isinstance(shell, str)
                                               else shell),
        timeout=parse_duration(raw["timeout"]) if "timeout" in raw else None,
        grace=parse_duration(raw.get("grace", Step.grace)),
        retries=_retries(raw["retries"]) if "retries" in raw else None,
        continue_on_error=bool(raw.get("continue_on_error", Step.continue_on_error)),
        for_each=(unwrap(for_each) if isinstance(for_each, str)
                  else None if for_each is None else frozen["for_each"]),
        max_parallel=_int(raw.get("max_parallel")), pool=pool(raw.get("pool")),
    )


def build_job(data: dict[str, Any], document: yamlsafe.Document, *, name: str, file: str,
           sha256: str) -> Job:
    frozen = _freeze(data)

    def steps(key: str) -> tuple[Step, ...]:
        return tuple(_step(raw, frozen[key][i], document.where((key, i))[0])
                     for i, raw in enumerate(data.get(key, ())))

    schedule = data.get("schedule")
    entries = [] if schedule is None else schedule if isinstance(schedule, list) else [schedule]
    concurrency = data.get("concurrency", Concurrency.policy)
    if isinstance(concurrency, str):
        concurrency = {"policy": concurrency}
    breaker = data.get("circuit_breaker")
    return Job(
        name=name, file=file, sha256=sha256, steps=steps("steps"),
        description=data.get("description", Job.description),
        enabled=data.get("enabled", Job.enabled),
        schedules=tuple(schedules.build(e, folder=os.path.dirname(os.path.abspath(file)))
                        for e in entries),
        concurrency=Concurrency(Policy(concurrency["policy"]),
                                _int(concurrency.get("max_active")),
                                _int(concurrency.get("max_queued", Concurrency.max_queued))),
        timeout=parse_duration(data["timeout"]) if "timeout" in data else None,
        retries=_retries(data["retries"]) if "retries" in data else RetryPolicy(),
        circuit_breaker=None if breaker is None else CircuitBreaker(
            _int(breaker["after"]),
            parse_duration(breaker.get("cooldown", CircuitBreaker.cooldown))),
        history=history(data.get("history", {})),
        env=_env(data.get("env")),
        params=_freeze({k: params.declared(k, v) for k, v in data.get("params", {}).items()}),
        secrets=secret_refs(data.get("secrets")),
        on_success=steps("on_success"), on_failure=steps("on_failure"),
        finally_=steps("finally"), outputs=_env(data.get("outputs")),
        notify=notify_targets(data.get("notify")),
        deadline=parse_duration(data["deadline"]) if "deadline" in data else None,
        pool=pool(data.get("pool")), runs_on=_env(data.get("runs_on")),
        on_node_loss_retry=data.get("on_node_loss", "fail") == "retry", document=frozen,
    )


class _Unplaced:
    """Positions for a job rebuilt from a run's record, which has none."""

    def where(self, path: JsonPath, key: bool = False) -> Mark:
        return (0, 0)


def job_from_record(document: Mapping[str, Any], *, name: str, file: str, sha256: str) -> Job:
    """A job as a run's record holds it: what a node without the jobs directory runs.

    The record is the document that passed every check when its file was loaded (secrets as
    references, never values), so it is built again as it is.
    """
    data = thaw(document)
    return build_job(data, cast(yamlsafe.Document, _Unplaced()), name=name, file=file,
                  sha256=sha256)

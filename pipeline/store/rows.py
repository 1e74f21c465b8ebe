"""Values as the store's rows hold them, and rows read back as records: the conversions
both backends share.

Times are fixed-width ISO 8601 UTC text, so they sort and compare as text on both; JSON is text;
what the store needs of a job (``JobSettings``) is one JSON column on its row.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, cast

from pipeline.model import (
    CircuitBreaker,
    Concurrency,
    Policy,
    RunStatus,
    StepStatus,
    Trigger,
    empty_mapping,
    freeze,
)
from pipeline.runrecords import RunRecord, StepRecord, Version
from pipeline.store.records import KEYED_TRIGGERS, JobSettings


def iso(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC: sorts and compares as text in the same order as in time."""
    if value.tzinfo is not UTC:  # most times come in UTC already: skip the conversion
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store needs aware times")
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso(value)


def time_of(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return None if value is None else value.astimezone(UTC)
    return datetime.fromisoformat(value)


def _plain(value: object) -> object:
    """What JSON cannot take as it is: frozen mappings, and the dates YAML may put in a
    document (kept as their text)."""
    return dict(value) if isinstance(value, Mapping) else str(value)


# One encoder built once: json.dumps with any option builds a new one per call.
to_json = json.JSONEncoder(separators=(",", ":"), default=_plain).encode


def from_json(value: str | bytes | Mapping[str, Any] | None) -> Any:
    if value is None or isinstance(value, Mapping | list):
        return value
    return json.loads(value)


@functools.lru_cache(maxsize=4096)
def version_json(version: Version | None) -> str | None:
    return None if version is None else to_json(version.as_dict())


# Every run of a job version stores the same document: encode it once. Keyed by identity,
# holding the object so the id cannot be reused while cached.
_documents: dict[int, tuple[object, str]] = {}


def document_json(document: Mapping[str, Any]) -> str:
    known = _documents.get(id(document))
    if known is None or known[0] is not document:
        if len(_documents) > 4096:
            _documents.clear()
        known = _documents[id(document)] = (document, to_json(document))
    return known[1]


def document_of(value: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored job definition, decoded and frozen. Every run of one version of a job holds
    the same text, and decoding it for each run started was a tenth of the daemon's CPU at
    100 runs a second: the same text is decoded once (the result is immutable, so shared)."""
    if not isinstance(value, str):
        return cast(Mapping[str, Any], freeze(from_json(value)))
    return _decoded(value)


# Least recently used out, one at a time: the cache held 512 and was emptied whole when full,
# so 1,000 jobs firing in turn never found their text in it.
@functools.lru_cache(maxsize=2048)
def _decoded(text: str) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], freeze(from_json(text)))


def fire_key(trigger: Trigger, fire_time: str | None) -> str | None:
    return fire_time if trigger in KEYED_TRIGGERS else None


RUN_COLUMNS = ("id, job, status, trigger, fire_time, queued_at, started_at, finished_at, "
               "reason, params, version, parent_run_id, node, attempt, outputs, rerun_of, "
               "reuse, event, notifications, late")
DOCUMENT = 20  # the column after RUN_COLUMNS, where a query adds the document
STEP_COLUMNS = ("run_id, step_id, status, attempt, exit_code, signal, started_at, finished_at, "
                "outputs, error, log, pgid, item, waited_from")


def run_record(row: Sequence[Any], document: Any = None,
               steps: tuple[StepRecord, ...] = ()) -> RunRecord:
    """A run from a row of ``RUN_COLUMNS`` (times as text or datetimes, JSON as text or
    already decoded)."""
    version = from_json(row[10])
    outputs = from_json(row[14])
    return RunRecord(
        id=row[0], job=row[1], status=RunStatus(row[2]), trigger=Trigger(row[3]),
        fire_time=time_of(row[4]), queued_at=time_of(row[5]), started_at=time_of(row[6]),
        finished_at=time_of(row[7]), reason=row[8], params=freeze(from_json(row[9])),
        version=None if version is None else Version(**version), parent_run_id=row[11],
        node=row[12], attempt=row[13] or 0,
        outputs=MappingProxyType(dict(outputs)) if outputs else empty_mapping(),
        rerun_of=row[15], reuse=freeze(from_json(row[16]) or {}),
        event=freeze(from_json(row[17])) if row[17] else None,
        notifications=freeze(from_json(row[18]) or []), late=bool(row[19]),
        document=None if document is None else document_of(document),
        steps=steps)


def step_record(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        run_id=row[0], id=row[1], status=StepStatus(row[2]), attempt=row[3], exit_code=row[4],
        signal=row[5], started_at=time_of(row[6]), finished_at=time_of(row[7]),
        outputs=MappingProxyType(from_json(row[8]) or {}), error=row[9], log=row[10],
        pgid=row[11], item=row[12], waited_from=time_of(row[13]))


def settings_json(job: JobSettings) -> str:
    c, b = job.concurrency, job.breaker
    return to_json({"policy": str(c.policy), "max_active": c.max_active,
                    "max_queued": c.max_queued, "enabled": job.enabled,
                    "breaker": None if b is None else {"after": b.after, "cooldown": b.cooldown},
                    "on_node_loss": "retry" if job.on_node_loss_retry else "fail",
                    "pool": None if job.pool is None else list(job.pool)})


def settings_of(name: str, text: str | None) -> JobSettings:
    data = from_json(text)
    if not data:
        return JobSettings(name)
    breaker = data.get("breaker")
    return JobSettings(
        name, Concurrency(Policy(data["policy"]), data.get("max_active"),
                          data.get("max_queued", 10)),
        None if breaker is None else CircuitBreaker(breaker["after"], breaker["cooldown"]),
        bool(data.get("enabled", True)), data.get("on_node_loss") == "retry",
        None if not data.get("pool") else (str(data["pool"][0]), int(data["pool"][1])))

"""The OpenAPI 3.1 document of the API, written by hand next to the routes it describes; a
test checks that both list the same routes, and fuzzes the API from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipeline.http.guard import MAX_LIMIT, MAX_WAIT
from pipeline.model import (
    JOB_NAME,
    RUN_ID,
    STEP_INSTANCE_ID,
    RunStatus,
    Trigger,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"anyOf": [dict(schema), {"type": "null"}]}


def _content(schema: Mapping[str, Any], kind: str = "application/json") -> dict[str, Any]:
    return {"content": {kind: {"schema": dict(schema)}}}


def _answers(ok: int, schema: Mapping[str, Any], description: str, *errors: int,
             kind: str = "application/json") -> dict[str, Any]:
    answers: dict[str, Any] = {str(ok): {"description": description,
                                         **_content(schema, kind)}}
    reasons = {400: "Malformed request", 401: "Token missing or wrong",
               403: "Refused: not a loopback Host without a token, or another site's request",
               404: "Unknown (or malformed) name or id", 409: "Conflict with the run's state",
               413: "Body over 1 MiB", 415: "Body is not JSON",
               422: "Parameters do not fit the job", 503: "The state directory cannot be used"}
    # Pages answer their errors as pages too (a 401 is the sign-in form).
    error = _content({"type": "string"}, kind) if kind == "text/html" else _content(
        _ref("Error"))
    for status in sorted({401, 403, 503, *errors}):
        answers[str(status)] = {"description": reasons[status], **error}
    return answers


def _path_param(name: str, pattern: re.Pattern[str], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern.pattern}}


def _query(name: str, schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": dict(schema)}


def _run_status() -> dict[str, Any]:
    return {"type": "string", "enum": [str(s) for s in RunStatus]}


def _node_schema() -> dict[str, Any]:
    text, when = {"type": "string"}, _nullable({"type": "string", "format": "date-time"})
    return {"type": "object", "required": ["id", "name", "state", "roles", "labels",
                                           "heartbeat_age_s", "active_runs", "jobs_match"],
            "properties": {
                "id": text, "name": text, "state": {"enum": ["alive", "left", "lost"]},
                "roles": {"type": "array", "items": text},
                "labels": {"type": "object", "additionalProperties": text},
                "version": text, "listen": _nullable(text), "started_at": when,
                "heartbeat_at": when, "lease_expires_at": when,
                "heartbeat_age_s": _nullable({"type": "number"}),
                "active_runs": {"type": "integer"},
                "max_runs": _nullable({"type": "integer"}),
                "jobs_match": _nullable({"type": "boolean"})}}


def _schemas() -> dict[str, Any]:
    """The document's named schemas: errors, jobs, runs, and what the other routes answer."""
    text = {"type": "string"}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": text, "message": text}}}},
        **_job_schemas(),
        **_run_schemas(),
        "TriggerRequest": {"type": "object", "additionalProperties": False, "properties": {
            "params": {"type": "object", "additionalProperties": {
                "type": ["string", "number", "boolean"]}}}},
        "Accepted": {"type": "object", "required": ["run_id", "status"], "properties": {
            "run_id": text, "job": text, "status": _run_status(), "url": text}},
        "Stopping": {"type": "object", "required": ["run_id", "status"],
                     "properties": {"run_id": text, "status": {"const": "stopping"}}},
        "Deleted": {"type": "object", "required": ["id", "deleted"], "properties": {
            "id": text, "job": text, "deleted": {"type": "boolean"}}},
        "Circuit": {"type": "object", "required": ["job", "circuit"], "properties": {
            "job": text, "circuit": {"const": "closed"}}},
        "Health": {"type": "object", "required": ["status"],
                   "properties": {"status": {"const": "ok"}}},
        "Node": _node_schema(),
        "Metrics": {"type": "object", "required": ["metrics"], "properties": {"metrics": {
            "type": "array", "items": {"type": "object", "required": [
                "name", "type", "help", "samples"], "properties": {
                "name": text, "type": text, "help": text, "samples": {"type": "array"}}}}}},
    }


def _job_schemas() -> dict[str, Any]:
    """A job as the API lists it (with its file's problems), its decisions, the list."""
    text, integer = {"type": "string"}, {"type": "integer"}
    time = _nullable({"type": "string", "format": "date-time"})
    return {
        "Problem": {"type": "object", "required": ["file", "line", "column", "message"],
                    "properties": {"file": text, "line": integer, "column": integer,
                                   "message": text}},
        "Job": {"type": "object", "required": [
            "name", "file", "valid", "errors", "enabled", "schedule", "next_fire_time",
            "last_run", "active_runs", "circuit", "version"], "properties": {
            "name": _nullable(text), "file": text, "valid": {"type": "boolean"},
            "errors": {"type": "array", "items": _ref("Problem")},
            "stale": {"type": "boolean"}, "description": _nullable(text),
            "enabled": _nullable({"type": "boolean"}), "schedule": _nullable(text),
            "next_fire_time": time, "next_fire_note": _nullable(text),
            "last_run": _nullable(_ref("RunSummary")),
            "active_runs": integer, "queued_runs": integer,
            "circuit": {"type": "string", "enum": ["closed", "open"]},
            "concurrency": _nullable(text), "params": {"type": "object"},
            "version": _nullable(text), "paused": {"type": "boolean"},
            "paused_at": time, "paused_by": _nullable(text),
            "paused_reason": _nullable(text)}},
        "Decision": {"type": "object", "required": ["outcome", "decided_at"], "properties": {
            "fire_time": time, "decided_at": {"type": "string", "format": "date-time"},
            "outcome": {"enum": ["fired", "skipped", "not made", "late", "notified",
                                 "notify failed", "notify suppressed"]},
            "reason": _nullable(text), "detail": _nullable(text), "run_id": _nullable(text),
            "node": _nullable(text)}},
        "JobList": {"type": "object", "required": ["jobs"],
                    "properties": {"jobs": {"type": "array", "items": _ref("Job")}}},
    }


def _run_schemas() -> dict[str, Any]:
    """A run's step, a run with and without its steps, a page of runs."""
    text, number, integer = {"type": "string"}, {"type": "number"}, {"type": "integer"}
    time = _nullable({"type": "string", "format": "date-time"})
    step: dict[str, Any] = {"type": "object", "required": [
        "id", "status", "attempt", "exit_code", "started_at", "finished_at", "duration_s",
        "outputs", "error"], "properties": {
        "id": text, "status": {"type": "string", "enum": [
            "pending", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"]},
        "attempt": integer, "exit_code": _nullable(integer), "signal": _nullable(integer),
        "started_at": time, "finished_at": time, "duration_s": _nullable(number),
        "outputs": {"type": "object", "additionalProperties": text}, "error": _nullable(text),
        "log": _nullable(text), "log_url": _nullable(text), "item": text,
        "waited_from": time}}
    run_fields = {
        "id": {"type": "string", "pattern": RUN_ID.pattern}, "job": text, "status": _run_status(),
        "trigger": {"type": "string", "enum": [str(t) for t in Trigger]},
        "fire_time": time, "queued_at": time, "started_at": time, "finished_at": time,
        "duration_s": _nullable(number), "params": {"type": "object"},
        "version": _nullable({"type": "object", "properties": {
            "sha256": text, "git_commit": _nullable(text), "git_blob": _nullable(text),
            "git_dirty": _nullable({"type": "boolean"})}}),
        "reason": _nullable(text), "parent_run_id": _nullable(text),
        "outputs": {"type": "object", "additionalProperties": text}}
    run_required = ["id", "job", "status", "trigger", "fire_time", "queued_at", "started_at",
                    "finished_at", "duration_s", "params", "version", "reason"]
    return {
        "Step": step,
        "RunSummary": {"type": "object", "required": run_required, "properties": run_fields},
        "Run": {"type": "object", "required": [*run_required, "steps"], "properties": {
            **run_fields, "steps": {"type": "array", "items": _ref("Step")}}},
        "RunList": {"type": "object", "required": ["runs", "total", "limit", "offset",
                                                   "next_offset"], "properties": {
            "runs": {"type": "array", "items": _ref("RunSummary")}, "total": integer,
            "limit": integer, "offset": integer, "next_offset": _nullable(integer)}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the app serves (but the sign-in form)."""
    name = _path_param("name", JOB_NAME, "A job's name")
    run_id = _path_param("run_id", RUN_ID, "A run's id")
    step = _path_param("step", STEP_INSTANCE_ID, "A step's id (for_each instances: ID.N)")
    return {
        "openapi": "3.1.0",
        "info": {"title": "pipeline", "version": "1",
                 "description": "The pipeline daemon's status API (CONTRACT §5). With a token, "
                                "every route but /healthz needs Authorization: Bearer TOKEN."},
        "components": {"schemas": _schemas(), "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": {**_probe_paths(), **_page_paths(name, run_id, step), **_job_paths(name),
                  **_operator_paths(name, run_id), **_run_paths(run_id, step),
                  **_daemon_paths()},
    }


def _probe_paths() -> dict[str, Any]:
    """What a probe and a scraper read: liveness, and the Prometheus metrics."""
    return {
        "/healthz": {"get": {"operationId": "health", "security": [],
                             "responses": _answers(200, _ref("Health"), "Alive", )}},
        "/metrics": {"get": {"operationId": "metrics", "responses": _answers(
            200, {"type": "string"}, "Prometheus text format", kind="text/plain")}},
    }


def _page_paths(name: dict[str, Any], run_id: dict[str, Any],
                step: dict[str, Any]) -> dict[str, Any]:
    """The status pages (HTML), and a log's next lines as the pages follow it."""
    html = {"type": "string"}
    return {
        "/": {"get": {"operationId": "statusPage", "parameters": [
            _query("job", {"type": "string"}, "Show only this job's runs"),
            _query("q", {"type": "string"}, "Show only jobs whose name contains this"),
            _query("status", {"type": "string"}, "A run status (runs, and jobs whose "
                   "last run has it) or a job state: paused, stale, circuit open, "
                   "disabled, never ran"),
            _query("since", {"type": "string"}, "Only runs queued in this last duration "
                   "(24h)"),
            _query("offset", {"type": "integer", "minimum": 0}, "Runs to skip"),
            _query("jobs_from", {"type": "integer", "minimum": 0}, "Jobs to skip")],
            "responses": _answers(200, html, "The status page", 400, 404,
                                  kind="text/html")}},
        "/jobs/{name}": {"get": {"operationId": "jobPage", "parameters": [name],
                                 "responses": _answers(200, html, "A job's page", 404,
                                                       kind="text/html")}},
        "/runs/{run_id}": {"get": {"operationId": "runPage", "parameters": [
            run_id, _query("grep", {"type": "string"}, "Show only log lines containing "
                           "this"),
            _query("live", {"type": "string"}, "1: the page without reading logs (what "
                   "the page's script asks for while the run is active)")],
            "responses": _answers(200, html, "A run's page", 404, kind="text/html")}},
        "/runs/{run_id}/log/{step}": {"get": {
            "operationId": "logLines", "parameters": [
                run_id, step, _query("offset", {"type": "integer", "minimum": 0},
                                     "Where to start, in bytes")],
            "responses": _answers(200, html, "The step's log from offset, as HTML lines "
                                  "(whole lines while the step runs); X-Log-Next says "
                                  "where to go on, X-Log-Done: 1 that there is no more",
                                  400, 404, kind="text/html")}},
    }


def _job_paths(name: dict[str, Any]) -> dict[str, Any]:
    """The jobs: the list, one job, a run made now, a circuit closed."""
    return {
        "/api/v1/jobs": {"get": {"operationId": "listJobs", "responses": _answers(
            200, _ref("JobList"), "Every job file, valid or not")}},
        "/api/v1/jobs/{name}": {"get": {"operationId": "getJob", "parameters": [name],
                                        "responses": _answers(200, _ref("Job"), "One job",
                                                              404)}},
        "/api/v1/jobs/{name}/runs": {"post": {
            "operationId": "triggerJob", "parameters": [name],
            "requestBody": {"required": False, **_content(_ref("TriggerRequest"))},
            "responses": _answers(202, _ref("Accepted"), "Run started or queued", 400,
                                  404, 409, 413, 415, 422)}},
        "/api/v1/jobs/{name}/circuit/reset": {"post": {
            "operationId": "resetCircuit", "parameters": [name],
            "responses": _answers(200, _ref("Circuit"), "Circuit closed", 404, 413,
                                  415)}},
    }


def _operator_paths(name: dict[str, Any], run_id: dict[str, Any]) -> dict[str, Any]:
    """The operator's: pause, resume (one job or all), backfill, rerun, the decision log."""
    return {
        "/api/v1/jobs/{name}/pause": {"post": {
            "operationId": "pauseJob", "parameters": [name],
            "requestBody": {"required": False, **_content({
                "type": "object", "additionalProperties": False,
                "properties": {"reason": _nullable({"type": "string",
                                                    "maxLength": 1000})}})},
            "responses": _answers(200, _ref("Job"), "Paused", 400, 404, 413, 415)}},
        "/api/v1/jobs/{name}/resume": {"post": {
            "operationId": "resumeJob", "parameters": [name],
            "requestBody": {"required": False, **_content({
                "type": "object", "additionalProperties": False,
                "properties": {"catchup": _nullable({"type": "boolean"})}})},
            "responses": _answers(200, _ref("Job"), "Resumed", 400, 404, 413, 415)}},
        "/api/v1/jobs/{name}/backfill": {"post": {
            "operationId": "backfillJob", "parameters": [name],
            "requestBody": {"required": True, **_content({
                "type": "object", "additionalProperties": False, "required": ["from", "to"],
                "properties": {
                    "from": {"type": "string", "format": "date-time"},
                    "to": {"type": "string", "format": "date-time"},
                    "rerun": _nullable({"enum": ["none", "failed", "all"]}),
                    "max_parallel": _nullable({"type": "integer", "minimum": 1,
                                               "maximum": 1000})}})},
            "responses": _answers(202, {"type": "object", "required": ["run_ids"],
                                        "properties": {"run_ids": {
                                            "type": "array",
                                            "items": {"type": "string"}}}},
                                  "Runs made, one per instant", 400, 404, 409, 413,
                                  415)}},
        "/api/v1/runs/{run_id}/rerun": {"post": {
            "operationId": "rerunRun", "parameters": [run_id],
            "requestBody": {"required": False, **_content({
                "type": "object", "additionalProperties": False, "properties": {
                    "from_step": _nullable({"type": "string"}),
                    "failed": _nullable({"type": "boolean"})}})},
            "responses": _answers(202, {"type": "object", "required": ["run_id"],
                                        "properties": {"run_id": {"type": "string"}}},
                                  "The new run", 400, 404, 409, 413, 415)}},
        "/api/v1/pause": {"post": {
            "operationId": "pauseAll",
            "requestBody": {"required": False, **_content({
                "type": "object", "additionalProperties": False,
                "properties": {"reason": _nullable({"type": "string",
                                                    "maxLength": 1000})}})},
            "responses": _answers(200, {"type": "object"}, "Every job paused", 400, 413,
                                  415)}},
        "/api/v1/resume": {"post": {
            "operationId": "resumeAll",
            "requestBody": {"required": False, **_content({
                "type": "object", "additionalProperties": False,
                "properties": {"catchup": _nullable({"type": "boolean"})}})},
            "responses": _answers(200, {"type": "object"}, "Every job resumed", 400, 413,
                                  415)}},
        "/api/v1/jobs/{name}/decisions": {"get": {
            "operationId": "jobDecisions", "parameters": [
                name,
                _query("since", {"type": "string", "format": "date-time"},
                       "Decisions about fires at or after this time"),
                _query("until", {"type": "string", "format": "date-time"},
                       "Decisions about fires up to this time"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                       "At most this many, newest first")],
            "responses": _answers(200, {"type": "object", "required": ["decisions"],
                                        "properties": {"job": {"type": "string"}, "decisions": {
                                            "type": "array", "items": _ref("Decision")}}},
                                  "The scheduler's decisions, newest first", 400, 404)}},
    }


def _run_paths(run_id: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """The runs: the list, one run (or delete it), stop, a step's log."""
    return {
        "/api/v1/runs": {"get": {"operationId": "listRuns", "parameters": [
            _query("job", {"type": "string", "pattern": JOB_NAME.pattern}, "Job name"),
            _query("status", {"type": "string", "enum": [str(s) for s in RunStatus]},
                   "Run status"),
            _query("trigger", {"type": "string", "enum": [str(t) for t in Trigger]},
                   "What started the run"),
            _query("since", {"type": "string", "format": "date-time"},
                   "Runs queued at or after this time"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                   "Page size (default 50)"),
            _query("offset", {"type": "integer", "minimum": 0}, "Runs to skip")],
            "responses": _answers(200, _ref("RunList"), "Runs, newest first", 400)}},
        "/api/v1/runs/{run_id}": {
            "get": {"operationId": "getRun", "parameters": [run_id, _query(
                "wait", {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                "Answer once the run has finished, or after this many seconds")],
                "responses": _answers(200, _ref("Run"), "One run with its steps", 400,
                                      404)},
            "delete": {"operationId": "deleteRun", "parameters": [run_id],
                       "responses": _answers(200, _ref("Deleted"),
                                             "Run and its logs deleted", 404, 409, 413,
                                             415)}},
        "/api/v1/runs/{run_id}/stop": {"post": {
            "operationId": "stopRun", "parameters": [run_id],
            "responses": _answers(202, _ref("Stopping"), "The run is being cancelled", 404,
                                  409, 413, 415)}},
        "/api/v1/runs/{run_id}/steps/{step}/log": {"get": {
            "operationId": "stepLog", "parameters": [
                run_id, step,
                _query("offset", {"type": "integer", "minimum": 0},
                       "Start at this byte (resume a follow)"),
                _query("follow", {"type": "boolean"},
                       "Stream the log until the step has finished")],
            "responses": _answers(200, {"type": "string"}, "The log as text", 400, 404,
                                  kind="text/plain")}},
    }


def _daemon_paths() -> dict[str, Any]:
    """What the daemon tells of itself: figures, this document, pools, the jobs' graph, nodes."""
    return {
        "/api/v1/metrics": {"get": {"operationId": "metricsJson", "responses": _answers(
            200, _ref("Metrics"), "The figures of /metrics as JSON")}},
        "/api/v1/openapi.json": {"get": {"operationId": "openapi", "responses": _answers(
            200, {"type": "object"}, "This document")}},
        "/api/v1/pools": {"get": {"operationId": "listPools", "responses": _answers(
            200, {"type": "object", "required": ["pools"], "properties": {
                "pools": {"type": "array", "items": {
                    "type": "object", "required": ["name", "slots", "used", "waiting"],
                    "properties": {"name": {"type": "string"},
                                   "slots": {"type": "integer"},
                                   "used": {"type": "integer"},
                                   "waiting": {"type": "integer"}}}},
                "max_active_runs": _nullable({"type": "object"})}},
            "Each pool of the settings file: its slots, those in use, and waiters")}},
        "/api/v1/graph": {"get": {
            "operationId": "jobGraph", "parameters": [_query(
                "all", {"type": "boolean"}, "Every job, also those no `after:` connects")],
            "responses": _answers(200, {
                "type": "object", "required": ["jobs", "edges"], "properties": {
                    "jobs": {"type": "array", "items": {
                        "type": "object", "required": ["name", "loaded"], "properties": {
                            "name": {"type": "string"}, "loaded": {"type": "boolean"}}}},
                    "edges": {"type": "array", "items": {
                        "type": "object", "required": ["upstream", "downstream", "status"],
                        "properties": {"upstream": {"type": "string"},
                                       "downstream": {"type": "string"},
                                       "status": {"type": "array",
                                                  "items": {"type": "string"}}}}}}},
                "Which jobs fire after which (`schedule: {after: JOB}`), each edge with "
                "the states of the upstream's run that fire it", 400)}},
        "/api/v1/nodes": {"get": {"operationId": "listNodes", "responses": _answers(
            200, {"type": "object", "required": ["nodes"], "properties": {"nodes": {
                "type": "array", "items": _ref("Node")}}},
            "The nodes of the store (one in a single-machine setup)")}},
    }

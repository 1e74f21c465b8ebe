"""The HTTP API against a real daemon: a real store, journal, catalog and scheduler, real job
files and real step processes, served by hypercorn on port 0 in the test's own trio loop.

The other ``test_http_*`` modules, ``test_client`` and the browser test start their daemons
with ``open_daemon`` from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pipeline import daemon as daemon_module
from pipeline.daemon import Daemon
from pipeline.daemon import open_daemon as daemon_parts
from pipeline.events import Event, RunFinished, RunQueued, RunStarted, WatermarkMoved
from pipeline.http import MAX_BODY, create_app, openapi_document, serve_http
from pipeline.model import RunStatus, Trigger
from pipeline.runners import load_runners
from pipeline.statedir import new_run_id
from pipeline.store.sqlite import SqliteStore

# Every test here but one starts the daemon's parts on the real clock (open_daemon).
pytestmark = pytest.mark.slow

JOBS = {
    "hello.yaml": """
name: hello
description: Says hello
schedule: "every 1h"
steps:
  - id: greet
    run: echo hello; echo world
  - id: after
    needs: [greet]
    run: echo done
""",
    "slow.yaml": """
name: slow
concurrency: forbid
steps:
  - id: tick
    run: for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.25; done
""",
    "params.yaml": """
name: params
params:
  count: {type: integer, default: 1}
  target: {type: string, enum: [prod, staging], default: staging}
steps:
  - id: show
    run: echo "count=${{ params.count }} target=${{ params.target }}"
""",
    "fails.yaml": """
name: fails
steps:
  - id: boom
    run: echo about to fail; exit 3
""",
    "breaker.yaml": """
name: breaker
schedule: "every 1h"
circuit_breaker: {after: 1, cooldown: 1h}
steps:
  - id: x
    run: "true"
""",
    "broken.yaml": "name: broken\nsteps:\n  - id: a\n    run: echo hi\n    exec: [echo]\n",
}


def seed_failed_schedule(state_dir: Path, job: str, now: datetime) -> None:
    """A failed scheduled run of ``job`` finished just now: its circuit (after: 1) is open."""
    run_id = new_run_id(now)
    events: list[Event] = [
        WatermarkMoved(job, now),
        RunQueued(run_id, job, Trigger.SCHEDULE, now - timedelta(seconds=2),
                  fire_time=now - timedelta(seconds=2)),
        RunStarted(run_id, now - timedelta(seconds=2)),
        RunFinished(run_id, RunStatus.FAILED, now - timedelta(seconds=1), reason="seeded"),
    ]
    store = SqliteStore.open(state_dir)
    try:
        store.record(events)
    finally:
        store.close()


def seed_success(state_dir: Path, job: str, finished: datetime) -> str:
    run_id = new_run_id(finished)
    store = SqliteStore.open(state_dir)
    try:
        store.record([RunQueued(run_id, job, Trigger.MANUAL, finished - timedelta(seconds=1)),
                      RunStarted(run_id, finished - timedelta(seconds=1)),
                      RunFinished(run_id, RunStatus.SUCCEEDED, finished)])
    finally:
        store.close()
    return run_id


def write_jobs(root: Path, jobs: Mapping[str, str]) -> tuple[Path, Path]:
    jobs_dir, state_dir = root / "jobs.d", root / "state"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    for name, text in jobs.items():
        (jobs_dir / name).write_text(text)
    return jobs_dir, state_dir


@asynccontextmanager
async def open_daemon(root: Path, *, token: str | None = None,
                      jobs: Mapping[str, str] = JOBS,
                      read_only: bool = False) -> AsyncIterator[Daemon]:
    """The daemon's real parts (``daemon.open_daemon``) with HTTP on a free port; without the
    directory watcher, whose shutdown takes seconds (watchfiles' thread)."""
    jobs_dir, state_dir = write_jobs(root, jobs)
    runners = load_runners(plugins=False)[0]
    store = SqliteStore.open(state_dir)
    try:
        async with daemon_parts(jobs_dir=jobs_dir, state_dir=state_dir, store=store,
                                runners=runners) as daemon, trio.open_nursery() as inner:
            daemon.listen = await inner.start(partial(serve_http, daemon,
                                                      listen="127.0.0.1:0", token=token,
                                                      read_only=read_only))
            try:
                yield daemon
            finally:
                # As a signal would: end the runs, then the rest.
                with trio.move_on_after(10) as scope:
                    scope.shield = True
                    daemon.scheduler.stop_firing()
                    await daemon.worker.shutdown(0)
                inner.cancel_scope.cancel()
    finally:
        store.close()


def client(daemon: Daemon, **kwargs: Any) -> httpx.AsyncClient:
    assert daemon.listen is not None
    return httpx.AsyncClient(base_url=daemon.listen, timeout=10, **kwargs)


async def raw(daemon: Daemon, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` bytes as they are (no client normalises the path) and read the answer.

    The answer is read while sending: a server may answer (413) and close before the body is
    all sent.
    """
    assert daemon.listen is not None
    host, port = daemon.listen.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    data = b""

    async def send() -> None:
        try:
            await stream.send_all(request)
        except trio.BrokenResourceError:
            pass

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
        nursery.cancel_scope.cancel()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get_request(daemon: Daemon, path: str, host: str | None = None) -> bytes:
    assert daemon.listen is not None
    host = host or daemon.listen.removeprefix("http://")
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


async def wait_run(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/runs/{run_id}", params={"wait": 10})
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    assert run["status"] not in ("queued", "running"), run
    return run


async def first_output(daemon: Daemon, log_url: str) -> bytes:
    """Follow a step's log until its first bytes come, then hang up (on a raw socket: httpx
    leaves a generator unclosed when a stream is left early)."""
    assert daemon.listen is not None
    host, port = daemon.listen.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(get_request(daemon, log_url + "?follow=1"))
            data = b""
            while True:
                chunk = await stream.receive_some()
                assert chunk, f"{log_url} ended without output"
                data += chunk
                _, _, body = data.partition(b"\r\n\r\n")
                size, _, rest = body.partition(b"\r\n")  # chunked: "SIZE\r\nDATA"
                if size.strip(b"0") and rest:
                    return rest


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return dict(body)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    seed_failed_schedule(tmp_path / "state", "breaker", datetime.now(UTC))
    async with open_daemon(tmp_path) as started:
        yield started


# -- reading -----------------------------------------------------------------------------------

async def test_health_and_the_openapi_document_match_the_routes(daemon: Daemon) -> None:
    async with client(daemon) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        document = (await http.get("/api/v1/openapi.json")).json()
    assert document == json.loads(json.dumps(openapi_document()))
    app = create_app(daemon).app  # type: ignore[attr-defined]
    served = {(route.path, method.lower()) for route in app.routes if route.include_in_schema
              for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item}
    assert served == documented


async def test_jobs_show_every_file_with_its_state(daemon: Daemon) -> None:
    async with client(daemon) as http:
        jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
        by_name = {job["name"]: job for job in jobs}
        assert {"hello", "slow", "params", "fails", "breaker", None} == set(by_name)
        hello = by_name["hello"]
        assert {"name", "file", "valid", "errors", "enabled", "schedule", "next_fire_time",
                "last_run", "active_runs", "circuit", "version"} <= set(hello)
        assert hello["valid"] and hello["enabled"] and hello["errors"] == []
        assert hello["schedule"] and hello["circuit"] == "closed"
        assert datetime.fromisoformat(hello["next_fire_time"]).utcoffset() is not None
        assert hello["version"] == daemon.catalog.jobs["hello"].sha256
        assert by_name["params"]["params"]["target"]["enum"] == ["prod", "staging"]
        assert by_name["breaker"]["circuit"] == "open"
        broken = by_name[None]
        assert broken["file"].endswith("broken.yaml") and not broken["valid"]
        assert broken["errors"] and {"file", "line", "column", "message"} == set(
            broken["errors"][0])
        assert broken["errors"][0]["line"] >= 1

        one = await http.get("/api/v1/jobs/hello")
        assert one.json() == hello
        error_of(await http.get("/api/v1/jobs/nope"), 404)
        error_of(await http.get("/api/v1/jobs/-bad"), 404)


async def test_trigger_run_steps_log_and_history(daemon: Daemon) -> None:
    async with client(daemon) as http:
        started = await http.post("/api/v1/jobs/hello/runs")
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        assert started.json()["status"] in ("running", "queued")
        assert started.headers["location"] == f"/api/v1/runs/{run_id}"
        run = await wait_run(http, run_id)
        assert run["status"] == "succeeded" and run["trigger"] == "api"
        assert [s["id"] for s in run["steps"]] == ["greet", "after"]
        assert all(s["status"] == "succeeded" and s["exit_code"] == 0 for s in run["steps"])
        assert datetime.fromisoformat(run["started_at"]).utcoffset() is not None
        assert run["duration_s"] >= 0

        log = await http.get(run["steps"][0]["log_url"])
        assert log.status_code == 200 and log.text == "hello\nworld\n"
        assert log.headers["content-type"].startswith("text/plain")
        tail = await http.get(run["steps"][0]["log_url"], params={"offset": 6})
        assert tail.text == "world\n" and tail.headers["x-log-offset"] == "6"
        error_of(await http.get(f"/api/v1/runs/{run_id}/steps/nope/log"), 404)
        error_of(await http.get(f"/api/v1/runs/{run_id}/steps/greet/log",
                                params={"offset": "x"}), 400)

        failed = (await http.post("/api/v1/jobs/fails/runs", json={})).json()["run_id"]
        assert (await wait_run(http, failed))["status"] == "failed"
        for _ in range(2):
            await wait_run(http, (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"])

        page = (await http.get("/api/v1/runs", params={"limit": 2, "trigger": "api"})).json()
        assert page["total"] == 4 and len(page["runs"]) == 2 and page["next_offset"] == 2
        assert "steps" not in page["runs"][0]
        rest = (await http.get("/api/v1/runs", params={"limit": 2, "offset": 2,
                                                       "trigger": "api"})).json()
        assert rest["next_offset"] is None
        ids = [r["id"] for r in page["runs"] + rest["runs"]]
        assert ids[-1] == run_id and len(set(ids)) == 4  # newest first
        only = (await http.get("/api/v1/runs", params={"job": "fails"})).json()
        assert [r["id"] for r in only["runs"]] == [failed]
        bad = (await http.get("/api/v1/runs", params={"status": "failed", "trigger": "api"})
               ).json()
        assert [r["id"] for r in bad["runs"]] == [failed]
        since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await http.get("/api/v1/runs", params={"since": since})).json()["total"] == 0
        for query in ({"limit": 0}, {"limit": "ten"}, {"limit": 100000}, {"offset": -1},
                      {"status": "bogus"}, {"trigger": "x"}, {"job": "../x"},
                      {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}):
            error_of(await http.get("/api/v1/runs", params=query), 400)
        error_of(await http.get(f"/api/v1/runs/{run_id}", params={"wait": "forever"}), 400)
        error_of(await http.get("/api/v1/runs/20260101T000000-00000000"), 404)


async def test_params_are_checked_and_typed(daemon: Daemon) -> None:
    async with client(daemon) as http:
        started = await http.post("/api/v1/jobs/params/runs",
                                  json={"params": {"count": 3, "target": "prod"}})
        assert started.status_code == 202, started.text
        run = await wait_run(http, started.json()["run_id"])
        assert run["params"] == {"count": 3, "target": "prod"}
        log = await http.get(run["steps"][0]["log_url"])
        assert log.text == "count=3 target=prod\n"
        as_text = await http.post("/api/v1/jobs/params/runs", json={"params": {"count": "4"}})
        assert as_text.status_code == 202
        await wait_run(http, as_text.json()["run_id"])

        for params in ({"count": "many"}, {"target": "moon"}, {"nope": 1},
                       {"count": [1]}, {"count": True}):
            error_of(await http.post("/api/v1/jobs/params/runs", json={"params": params}),
                     422)
        for body in ([1], "x", {"params": [1]}, {"param": {}}, {"params": "count=1"}):
            error_of(await http.post("/api/v1/jobs/params/runs", json=body), 400)
        for text in (b"{", b"{\"params\": NaN}", b"[" * 100000, b"\xff\xfe"):
            error_of(await http.post("/api/v1/jobs/params/runs", content=text,
                                     headers={"content-type": "application/json"}), 400)
        error_of(await http.post("/api/v1/jobs/nope/runs", json={}), 404)


async def test_bodies_must_be_small_json_or_empty(daemon: Daemon) -> None:
    async with client(daemon) as http:
        for kind in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "text/plain"):
            error_of(await http.post("/api/v1/jobs/hello/runs", content=b"a=1",
                                     headers={"content-type": kind}), 415)
        # (Raw sockets from here: a client still sending when the 413 comes back is cut off.)
        big = b'{"params": {"x": "' + b"a" * MAX_BODY + b'"}}'
        status, answer = await raw(daemon, b"POST /api/v1/jobs/params/runs HTTP/1.1\r\n"
                                   b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                   % (len(big), big))
        assert status == 413 and json.loads(answer)["error"]["code"] == "too_large"

        # Chunked, without Content-Length: the bytes are counted as they come.
        body = b'{"params": {"x": "' + b"a" * MAX_BODY
        chunked = (b"POST /api/v1/jobs/params/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                   b"Connection: close\r\n\r\n")
        for at in range(0, len(body), 65536):
            piece = body[at:at + 65536]
            chunked += b"%x\r\n%s\r\n" % (len(piece), piece)
        status, answer = await raw(daemon, chunked + b"0\r\n\r\n")
        assert status == 413 and json.loads(answer)["error"]["code"] == "too_large"
        huge = (b"POST /api/v1/jobs/hello/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 99999999999\r\nConnection: close\r\n\r\n{")
        assert (await raw(daemon, huge))[0] == 413
        bad = (b"POST /api/v1/jobs/hello/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Length: abc\r\nConnection: close\r\n\r\n{}")
        assert (await raw(daemon, bad))[0] == 400
        # A body exactly at the limit is read (and then judged on its content).
        at_limit = b'{"params": {"count": 2}}'.ljust(MAX_BODY, b" ")
        assert (await http.post("/api/v1/jobs/params/runs", content=at_limit,
                                headers={"content-type": "application/json"})).status_code == 202


async def test_forbid_conflict_stop_and_delete(daemon: Daemon) -> None:
    async with client(daemon) as http:
        first = (await http.post("/api/v1/jobs/slow/runs")).json()["run_id"]
        refused = await http.post("/api/v1/jobs/slow/runs")
        body = error_of(refused, 409)
        assert "forbid" in body["error"]["message"] and body["status"] == "skipped"
        skipped = (await http.get(f"/api/v1/runs/{body['run_id']}")).json()
        assert skipped["status"] == "skipped" and skipped["reason"]

        error_of(await http.delete(f"/api/v1/runs/{first}"), 409)
        await first_output(daemon, f"/api/v1/runs/{first}/steps/tick/log")
        stopping = await http.post(f"/api/v1/runs/{first}/stop")
        assert stopping.status_code == 202 and stopping.json()["status"] == "stopping"
        run = await wait_run(http, first)
        assert run["status"] == "cancelled"
        error_of(await http.post(f"/api/v1/runs/{first}/stop"), 409)
        error_of(await http.post("/api/v1/runs/20260101T000000-00000000/stop"), 404)

        log_dir = daemon.state_dir / "logs" / "slow" / first
        assert log_dir.is_dir()
        deleted = await http.delete(f"/api/v1/runs/{first}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert not log_dir.exists()
        error_of(await http.get(f"/api/v1/runs/{first}"), 404)
        error_of(await http.delete(f"/api/v1/runs/{first}"), 404)


async def test_follow_streams_a_live_log_and_resumes_at_an_offset(daemon: Daemon) -> None:
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/slow/runs")).json()["run_id"]
        url = f"/api/v1/runs/{run_id}/steps/tick/log"
        seen: list[tuple[float, bytes]] = []
        async with http.stream("GET", url, params={"follow": 1}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                seen.append((time.monotonic(), chunk))
        text = b"".join(chunk for _, chunk in seen).decode()
        assert text == "".join(f"tick {i}\n" for i in range(1, 7))
        # Live: the first line arrived well before the step ended, in several pieces.
        assert len(seen) >= 3 and seen[-1][0] - seen[0][0] > 0.6
        run = await wait_run(http, run_id)
        assert run["steps"][0]["status"] == "succeeded"
        # A follower that lost its connection after 2 lines resumes from there.
        offset = len("tick 1\ntick 2\n")
        resumed = await http.get(url, params={"follow": "true", "offset": offset})
        assert resumed.text == text[offset:] and resumed.headers["x-log-offset"] == str(offset)
        error_of(await http.get(url, params={"follow": "maybe"}), 400)


async def test_follow_waits_for_a_step_that_has_not_started(daemon: Daemon) -> None:
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"]
        followed = await http.get(f"/api/v1/runs/{run_id}/steps/after/log",
                                  params={"follow": 1})
        assert followed.status_code == 200 and followed.text == "done\n"


async def test_names_and_ids_from_urls_never_reach_a_path(daemon: Daemon) -> None:
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"]
        await wait_run(http, run_id)
    attempts = [
        "/api/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/api/v1/jobs/%2e%2e", "/api/v1/jobs/%2E%2E/runs",
        "/api/v1/jobs/hello%00", "/api/v1/jobs/..%5c..%5cstate.db",
        "/api/v1/jobs/%252e%252e%252fstate.db", "/api/v1/runs/..%2F..%2Fstate.db",
        "/api/v1/runs/%2e%2e", f"/api/v1/runs/{run_id}%00",
        f"/api/v1/runs/{run_id}/steps/..%2F..%2F..%2Fstate.db/log",
        f"/api/v1/runs/{run_id}/steps/%2e%2e/log", f"/api/v1/runs/{run_id}/steps/greet%00/log",
        f"/api/v1/runs/{run_id}/steps/greet%2F..%2F..%2Fhello/log",
        f"/api/v1/runs/{run_id}/steps/%C0%AE%C0%AE/log", "/api/v1/runs/%ff%fe",
        "/runs/..%2F..%2Fstate.db", "/api/v1/../../etc/passwd", "/..%2f..%2fetc/passwd",
    ]
    for path in attempts:
        status, body = await raw(daemon, get_request(daemon, path))
        assert 400 <= status < 500, (path, status, body[:200])
        assert b"SQLite" not in body and b"root:" not in body, path
    stop = (f"POST /api/v1/runs/..%2F{run_id}/stop HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
    assert (await raw(daemon, stop))[0] == 404


async def test_unknown_routes_and_methods_answer_json_errors(daemon: Daemon) -> None:
    async with client(daemon) as http:
        error_of(await http.get("/api/v1/nothing"), 404)
        wrong = await http.get("/api/v1/jobs/hello/runs")
        error_of(wrong, 405)
        assert "POST" in wrong.headers["allow"]
        error_of(await http.put("/api/v1/runs/20260101T000000-00000000"), 405)
        error_of(await http.post("/api/v1/jobs"), 405)


async def test_circuit_reset(daemon: Daemon) -> None:
    async with client(daemon) as http:
        assert (await http.get("/api/v1/jobs/breaker")).json()["circuit"] == "open"
        reset = await http.post("/api/v1/jobs/breaker/circuit/reset")
        assert reset.status_code == 200 and reset.json() == {"job": "breaker",
                                                            "circuit": "closed"}
        assert (await http.get("/api/v1/jobs/breaker")).json()["circuit"] == "closed"
        error_of(await http.post("/api/v1/jobs/nope/circuit/reset"), 404)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_in_prometheus_text_and_json(tmp_path: Path) -> None:
    finished = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    seed_success(tmp_path / "state", "hello", finished)
    seed_failed_schedule(tmp_path / "state", "breaker", datetime.now(UTC))
    async with open_daemon(tmp_path) as daemon, client(daemon) as http:
        await wait_run(http, (await http.post("/api/v1/jobs/fails/runs")).json()["run_id"])
        slow = (await http.post("/api/v1/jobs/slow/runs")).json()["run_id"]
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(response.text)
        assert found[("pipeline_runs_total", (("job", "fails"), ("status", "failed")))] == 1
        assert found[("pipeline_runs_active", (("job", "slow"),))] == 1
        assert found[("pipeline_runs_active_total", ())] == 1
        assert found[("pipeline_job_files_invalid", ())] == 1
        assert found[("pipeline_circuit_breakers_open", ())] == 1
        assert found[("pipeline_jobs", ())] == 5
        assert found[("pipeline_last_success_timestamp_seconds", (("job", "hello"),))] == \
            finished.timestamp()
        assert found[("pipeline_run_duration_seconds_count", (("job", "fails"),))] == 1
        assert found[("pipeline_step_duration_seconds_count",
                      (("job", "fails"), ("step", "boom")))] == 1
        assert ("pipeline_next_fire_timestamp_seconds", (("job", "hello"),)) in found
        assert not any(name.endswith("_created") for name, _ in found)

        as_json = (await http.get("/api/v1/metrics")).json()
        names = {family["name"] for family in as_json["metrics"]}
        assert {"pipeline_runs", "pipeline_fire_lateness_seconds", "pipeline_runs_queued",
                "pipeline_last_success_timestamp_seconds"} <= names
        await http.post(f"/api/v1/runs/{slow}/stop")
        await wait_run(http, slow)
        await wait_run(http, (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"])
        found = samples((await http.get("/metrics")).text)
        assert found[("pipeline_runs_total", (("job", "slow"), ("status", "cancelled")))] == 1
        assert found[("pipeline_last_success_timestamp_seconds", (("job", "hello"),))] > \
            finished.timestamp()


async def test_status_page_and_run_page(daemon: Daemon) -> None:
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/fails/runs")).json()["run_id"]
        await wait_run(http, run_id)
        index = await http.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith(
            "text/html")
        for text in ("hello", "slow", "broken.yaml", "takes only one of", run_id, "failed",
                     "circuit open"):
            assert text in index.text, text
        assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        link = f'href="/runs/{run_id}"'
        assert index.text.count(link) == 2  # the job's last run, and among the recent runs
        filtered = (await http.get("/", params={"job": "hello"})).text
        assert 'Recent runs of <a href="/jobs/hello">hello</a>' in filtered
        assert filtered.count(link) == 1
        page = await http.get(f"/runs/{run_id}")
        assert page.status_code == 200
        for text in ("boom", "about to fail", "failed", "exit 3"[:4]):
            assert text in page.text, text
        assert (await http.get("/runs/20260101T000000-00000000")).status_code == 404
        missing = await http.get("/runs/not-a-run")
        assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
        assert (await http.get("/", params={"job": "../etc"})).status_code == 404
        assert (await http.get("/", params={"offset": "x"})).status_code == 400


async def test_api_keeps_answering_while_runs_print(daemon: Daemon) -> None:
    async with client(daemon) as http:
        await http.post("/api/v1/jobs/slow/runs")
        took = []
        for _ in range(30):
            start = time.perf_counter()
            assert (await http.get("/api/v1/jobs")).status_code == 200
            took.append(time.perf_counter() - start)
        assert sorted(took)[-2] < 0.25, took


async def test_pipeline_serve_wiring_records_the_bound_address(tmp_path: Path) -> None:
    """``daemon.serve`` starts ``serve_http`` with ``nursery.start``; daemon.json has its URL."""
    jobs_dir, state_dir = write_jobs(tmp_path, {"hello.yaml": JOBS["hello.yaml"]})
    store = SqliteStore.open(state_dir)
    try:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(partial(
                daemon_module.serve, jobs_dir=jobs_dir, state_dir=state_dir, store=store,
                runners=load_runners(plugins=False)[0],
                serve_http=partial(serve_http, listen="127.0.0.1:0")))
            info = daemon_module.read_daemon_file(state_dir)
            assert info is not None and info["listen"] == daemon.listen
            assert daemon.listen is not None and daemon.listen.startswith("http://127.0.0.1:")
            assert not daemon.listen.endswith(":0")
            async with client(daemon) as http:
                assert (await http.get("/healthz")).status_code == 200
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_recent_answers_are_shared_and_bounded_in_age(autojump_clock: Any) -> None:
    from pipeline.http import MAX_AGE, REBUILD, RecentAnswers

    state = {"version": 0, "builds": 0}

    async def build() -> int:
        state["builds"] += 1
        await trio.sleep(0.1)  # a slow build: concurrent askers wait for this one
        return state["builds"]

    recent = RecentAnswers(lambda: state["version"])
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(recent.get, "k", build)
    assert state["builds"] == 1 and await recent.get("k", build) == 1
    await trio.sleep(MAX_AGE - 1)  # nothing happened: still good
    assert await recent.get("k", build) == 1
    state["version"] += 1  # something happened: rebuilt, but not more often than REBUILD
    assert await recent.get("k", build) == 2
    state["version"] += 1
    assert await recent.get("k", build) == 2
    await trio.sleep(REBUILD)
    assert await recent.get("k", build) == 3
    await trio.sleep(MAX_AGE)
    assert await recent.get("k", build) == 4
    recent.clear()
    assert await recent.get("k", build) == 5
    assert await recent.get("other", build) == 6


async def test_lists_catch_up_with_runs_started_elsewhere(daemon: Daemon) -> None:
    from pipeline.http import REBUILD

    async with client(daemon) as http:
        before = (await http.get("/api/v1/jobs/hello")).json()
        assert before["last_run"] is None
        dispatched, _ = await daemon.worker.trigger(daemon.catalog.jobs["hello"])
        await wait_run(http, dispatched.run_id)
        await trio.sleep(REBUILD)
        after = (await http.get("/api/v1/jobs/hello")).json()
        assert after["last_run"]["id"] == dispatched.run_id
        listed = (await http.get("/api/v1/runs", params={"job": "hello"})).json()
        assert listed["runs"][0]["id"] == dispatched.run_id


async def test_a_run_answer_carries_the_jobs_outputs_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_TEST_TOKEN", "hunter2-SECRET")
    jobs = {"out.yaml": """
name: out
secrets:
  TOKEN: {env: HTTP_TEST_TOKEN}
outputs:
  greeting: "${{ steps.greet.outputs.greeting }}"
  leak: "${{ secrets.TOKEN }}"
steps:
  - id: greet
    run: echo "greeting=hello" >> "$PIPELINE_OUTPUT"
"""}
    async with open_daemon(tmp_path, jobs=jobs) as started, client(started) as http:
        run_id = (await http.post("/api/v1/jobs/out/runs")).json()["run_id"]
        run = await wait_run(http, run_id)
        assert run["status"] == "succeeded"
        assert run["outputs"] == {"greeting": "hello", "leak": "***"}
        listed = (await http.get("/api/v1/runs", params={"job": "out"})).json()["runs"]
        assert listed[0]["outputs"] == run["outputs"]


DEPLOY = """
name: deploy
params:
  target: {type: string, enum: [prod, staging], default: staging}
  count: {type: integer, default: 1}
secrets:
  API_KEY: {env: TEST_DEPLOY_KEY}
steps:
  - id: go
    run: echo "to ${{ params.target }} x${{ params.count }} with ${{ secrets.API_KEY }}"
"""


def run_again_button(page: str) -> tuple[str, str]:
    """The run page's "Run again" button: where it posts, and the body it sends (as the
    page's script does: ``data-body``, else ``{}``)."""
    import html
    import re

    button = re.search(r"<button ([^>]*)>Run again</button>", page)
    assert button, "no Run again button"
    attributes = {name: double or single for name, double, single in re.findall(
        r'([\w-]+)=(?:"([^"]*)"|\'([^\']*)\')', button.group(1))}
    return html.unescape(attributes["data-post"]), html.unescape(
        attributes.get("data-body", "{}"))


async def test_run_again_keeps_the_params_and_shows_no_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-Deploy-Key-9931"
    monkeypatch.setenv("TEST_DEPLOY_KEY", secret)
    async with open_daemon(tmp_path, jobs={"deploy.yaml": DEPLOY}) as daemon, \
            client(daemon) as http:
        first = (await http.post("/api/v1/jobs/deploy/runs",
                                 json={"params": {"target": "prod", "count": 3}})).json()
        await wait_run(http, first["run_id"])
        page = (await http.get(f"/runs/{first['run_id']}")).text
        assert secret not in page
        url, body = run_again_button(page)
        assert json.loads(body) == {"params": {"target": "prod", "count": 3}}
        assert "***" not in body  # secrets are not params: nothing masked to send back
        again = await http.post(url, content=body, headers={"Content-Type": "application/json"})
        assert again.status_code == 202, again.text
        rerun = await wait_run(http, again.json()["run_id"])
        assert rerun["status"] == "succeeded"
        assert rerun["params"] == {"target": "prod", "count": 3}
        log = (await http.get(rerun["steps"][0]["log_url"])).text
        assert log == "to prod x3 with ***\n"  # the secret was read anew, and masked


PARENT_AND_CHILD = {
    "parent.yaml": """
name: parent
concurrency: allow
steps:
  - {id: call, uses: job, with: {job: child, params: {who: x}}}
  - id: use
    needs: [call]
    run: >-
      echo "got=${{ steps.call.outputs.greeting }} from ${{ steps.call.outputs.run_id }}"
      >> "$PIPELINE_OUTPUT"
""",
    "child.yaml": """
name: child
concurrency: allow
params: {who: {type: string}}
steps:
  - id: s
    run: >-
      sleep 0.${{ params.who | length }};
      echo "greeting=hello ${{ params.who }}" >> "$PIPELINE_OUTPUT"
outputs: {greeting: "${{ steps.s.outputs.greeting }}"}
""",
}


@pytest.mark.slow
async def test_a_child_run_hands_its_outputs_to_its_parent_every_time(tmp_path: Path) -> None:
    """Issue 9.1: the parent's step waits for the child's final record, every time, and gets
    its run id, status and the child job's own outputs."""
    async with open_daemon(tmp_path, jobs=PARENT_AND_CHILD) as daemon, client(daemon) as http:
        ids = [(await http.post("/api/v1/jobs/parent/runs")).json()["run_id"]
               for _ in range(10)]
        runs = [await wait_run(http, run_id) for run_id in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 10, [r["reason"] for r in runs]
    for run in runs:
        call, use = run["steps"]
        assert call["outputs"]["status"] == "succeeded"
        assert call["outputs"]["greeting"] == "hello x"
        assert use["outputs"]["got"] == f"hello x from {call['outputs']['run_id']}"


async def test_nodes_show_this_daemon(daemon: Daemon) -> None:
    async with client(daemon) as http:
        nodes = (await http.get("/api/v1/nodes")).json()["nodes"]
    mine = [n for n in nodes if n["id"] == daemon.lease.node_id]
    assert len(mine) == 1 and mine[0]["state"] == "alive"
    assert mine[0]["roles"] == ["http", "runner", "scheduler"]
    assert mine[0]["jobs_match"] is True and mine[0]["heartbeat_age_s"] < 60


async def test_pause_resume_and_decisions_through_the_api(daemon: Daemon) -> None:
    async with client(daemon) as http:
        paused = await http.post("/api/v1/jobs/hello/pause", json={"reason": "maintenance"})
        assert paused.status_code == 200, paused.text
        view = paused.json()
        assert view["paused"] and view["paused_reason"] == "maintenance"
        assert view["paused_by"].startswith("api (")
        error_of(await http.post("/api/v1/jobs/hello/pause", json={"why": "x"}), 400)
        error_of(await http.post("/api/v1/jobs/hello/pause", json={"reason": 3}), 400)
        error_of(await http.post("/api/v1/jobs/nope/pause"), 404)
        resumed = await http.post("/api/v1/jobs/hello/resume", json={"catchup": False})
        assert resumed.status_code == 200 and not resumed.json()["paused"]
        every = (await http.post("/api/v1/pause")).json()
        assert every["paused"] and "hello" in every["jobs"]
        jobs = (await http.get("/api/v1/jobs")).json()["jobs"]
        assert all(j["paused"] for j in jobs if j["name"])
        assert (await http.post("/api/v1/resume")).status_code == 200
        # A trigger is a decision too.
        run_id = (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"]
        await wait_run(http, run_id)
        found = (await http.get("/api/v1/jobs/hello/decisions")).json()["decisions"]
        assert found[0]["outcome"] == "fired" and found[0]["run_id"] == run_id
        error_of(await http.get("/api/v1/jobs/nope/decisions"), 404)
        error_of(await http.get("/api/v1/jobs/hello/decisions?since=yesterday"), 400)


async def test_backfill_and_rerun_through_the_api(tmp_path: Path) -> None:
    jobs = {"daily.yaml": """
name: daily
schedule: {cron: "0 3 * * *", timezone: UTC}
steps:
  - {id: a, run: 'echo "n=1" >> "$PIPELINE_OUTPUT"'}
  - {id: b, needs: [a], run: 'true'}
"""}
    async with open_daemon(tmp_path, jobs=jobs) as daemon, client(daemon) as http:
        made = await http.post("/api/v1/jobs/daily/backfill",
                               json={"from": "2026-11-01T00:00:00Z",
                                     "to": "2026-11-02T23:00:00Z", "max_parallel": 2})
        assert made.status_code == 202, made.text
        ids = made.json()["run_ids"]
        runs = [await wait_run(http, run_id) for run_id in ids]
        assert [r["fire_time"] for r in runs] == ["2026-11-01T03:00:00+00:00",
                                                  "2026-11-02T03:00:00+00:00"]
        assert {(r["trigger"], r["status"]) for r in runs} == {("backfill", "succeeded")}
        again = await http.post("/api/v1/jobs/daily/backfill",
                                json={"from": "2026-11-01T00:00:00Z",
                                      "to": "2026-11-02T23:00:00Z"})
        assert again.json()["run_ids"] == [] and len(again.json()["left_alone"]) == 2
        error_of(await http.post("/api/v1/jobs/daily/backfill", json={"from": "x"}), 400)
        error_of(await http.post("/api/v1/jobs/daily/backfill",
                                 json={"from": "2026-11-02T00:00:00Z",
                                       "to": "2026-11-01T00:00:00Z"}), 409)
        rerun = await http.post(f"/api/v1/runs/{ids[0]}/rerun", json={"from_step": "b"})
        assert rerun.status_code == 202, rerun.text
        run = await wait_run(http, rerun.json()["run_id"])
        assert run["rerun_of"] == ids[0] and run["trigger"] == "rerun"
        assert [(s["id"], s["status"]) for s in run["steps"]] == [("a", "reused"),
                                                                  ("b", "succeeded")]
        error_of(await http.post(f"/api/v1/runs/{ids[0]}/rerun", json={"failed": True}), 409)
        error_of(await http.post(f"/api/v1/runs/{ids[0]}/rerun", json={"from_step": "z"}), 409)


async def test_pools_are_shown_with_their_use(tmp_path: Path) -> None:
    jobs = {"settings.yaml": "kind: settings\npools: {db: 2}\nmax_active_runs: 10\n",
            "long.yaml": "name: long\npool: db\nconcurrency: allow\n"
                         "steps:\n  - {id: s, run: 'sleep 5'}\n"}
    async with open_daemon(tmp_path, jobs=jobs) as daemon, client(daemon) as http:
        for _ in range(3):
            assert (await http.post("/api/v1/jobs/long/runs")).status_code == 202
        answer = (await http.get("/api/v1/pools")).json()
        assert answer["pools"] == [{"name": "db", "slots": 2, "used": 2, "waiting": 1}]
        assert answer["max_active_runs"]["slots"] == 10
        metrics = (await http.get("/metrics")).text
        assert 'pipeline_pool_slots{pool="db",state="waiting"} 1.0' in metrics

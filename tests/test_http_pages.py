"""The status pages over a real daemon: a job's page, the index's filters, a run's timeline
and logs, read-only mode, the operator controls that appear with their routes, the assets."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.routing import Route

from pipeline.daemon import Daemon
from pipeline.http import StatusApp, create_app
from pipeline.store.records import Outcome, StoredDecision
from tests.test_http import (
    JOBS,
    client,
    error_of,
    first_output,
    open_daemon,
    seed_failed_schedule,
    wait_run,
)
from tests.test_http_auth import TOKEN, bearer

RETRIED = """
name: retried
retries: {limit: 1, delay: 0.3s}
steps:
  - id: flaky
    run: '[ "$PIPELINE_ATTEMPT" -ge 2 ] || { echo first try fails; exit 1; }; echo fine'
  - id: fan
    needs: [flaky]
    for_each: [a, b]
    run: echo "item ${{ item }}"
"""

COLOURS = r"""
name: colours
steps:
  - id: paint
    run: printf '\033[31mred\033[0m <b>not bold</b>\nplain\n\033[1;32mgreen\033[0m\n'
"""


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    seed_failed_schedule(tmp_path / "state", "breaker", datetime.now(UTC))
    async with open_daemon(tmp_path, jobs={**JOBS, "retried.yaml": RETRIED,
                                           "colours.yaml": COLOURS}) as started:
        yield started


def links_to_runs(page: str) -> list[str]:
    return re.findall(r'href="/runs/([0-9T]+-[0-9a-f]+)"', page)


async def test_a_jobs_page(daemon: Daemon) -> None:
    async with client(daemon) as http:
        ids = []
        for _ in range(3):
            ids.append((await http.post("/api/v1/jobs/hello/runs")).json()["run_id"])
            await wait_run(http, ids[-1])
        page = await http.get("/jobs/hello")
        assert page.status_code == 200 and "app;dur=" in page.headers["server-timing"]
        text = page.text
        strip = text[text.index('class="strip"'):text.index("</ol>", text.index('"strip"'))]
        assert links_to_runs(strip) == ids  # oldest first, each square opens its run
        assert 'aria-label="succeeded run' in strip
        assert "p50" in text and "p95" in text and 'class="col s-succeeded"' in text
        assert "every hour" in text  # the schedule in words
        fires = re.findall(r'<li><time datetime="([^"]+)"', text)
        assert len(fires) == 10 and fires == sorted(fires)
        assert [datetime.fromisoformat(f) - datetime.fromisoformat(fires[0])
                for f in fires[:2]] == [timedelta(0), timedelta(hours=1)]
        assert 'id="L5"' in text and "echo hello; echo world" in text  # the file, numbered
        assert 'action="/api/v1/jobs/hello/runs"' in text and "Run now" in text

        params = (await http.get("/jobs/params")).text
        assert re.search(r'<input type="number" id="p-count" name="count" data-type="integer" '
                         r'step="1" value="1"', params)
        assert re.search(r'<option value="&#34;staging&#34;" selected>staging</option>', params)
        assert "Run with these parameters" in params
        assert "pipeline trigger params -p count=… -p target=…" in params  # without script

        missing = await http.get("/jobs/nobody")
        assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
        assert (await http.get("/jobs/..%2Fstate.db")).status_code == 404


async def test_broken_files_show_their_errors_at_their_lines(daemon: Daemon) -> None:
    jobs_dir = daemon.jobs_dir
    broken = JOBS["hello.yaml"].replace("run: echo done", "run: echo done\n    timeout: soon")
    (jobs_dir / "hello.yaml").write_text(broken)
    await trio.to_thread.run_sync(daemon.catalog.scan)
    await daemon.scheduler.load(daemon.catalog.jobs)
    async with client(daemon) as http:
        stale = (await http.get("/jobs/hello")).text
        assert "stale: the last good version runs" in stale
        assert re.search(r'<li id="L11" class="err">.*timeout: soon.*expected a duration', stale)
        assert "Run now" in stale  # its last good version still runs
        never = await http.get("/jobs/broken")  # never valid: no job, only its file
        assert never.status_code == 200
        assert re.search(r'<li id="L5" class="err">.*takes only one of run, exec, uses',
                         never.text)
        assert "It cannot run" in never.text
        index = (await http.get("/")).text
        assert 'href="/jobs/broken#file"' in index and 'href="/jobs/hello#file"' in index
        assert '<span class="badge s-stale"' in index


async def test_the_index_filters_by_name_and_status(daemon: Daemon) -> None:
    async with client(daemon) as http:
        await wait_run(http, (await http.post("/api/v1/jobs/fails/runs")).json()["run_id"])
        ok = (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"]
        await wait_run(http, ok)

        def jobs_listed(page: str) -> list[str]:
            return re.findall(r'<a class="name" href="/jobs/([^"]+)">', page)

        everything = (await http.get("/")).text
        assert jobs_listed(everything) == ["breaker", "colours", "fails", "hello", "params",
                                           "retried", "slow"]
        for tile in ('href="/?status=running#runs"', 'href="/?status=failed&amp;since=24h#runs"',
                     'href="/?status=circuit+open#jobs"', 'href="/#invalid"'):
            assert tile in everything, tile
        assert jobs_listed((await http.get("/", params={"q": "EL"})).text) == ["hello"]
        failed = (await http.get("/", params={"status": "failed"})).text
        assert jobs_listed(failed) == ["breaker", "fails"]  # whose last run failed
        assert ok not in links_to_runs(failed) and links_to_runs(failed)
        assert "Failed runs" in failed
        breaker = (await http.get("/", params={"status": "circuit open"})).text
        assert jobs_listed(breaker) == ["breaker"]
        assert jobs_listed((await http.get("/", params={"status": "never ran"})).text) == [
            "colours", "params", "retried", "slow"]
        day = (await http.get("/", params={"status": "failed", "since": "24h"})).text
        assert "last 24h" in day
        exact = (await http.get("/", params={"q": "hello"})).text  # a whole name: its runs
        assert links_to_runs(exact)[-1] == ok and "Recent runs of" in exact
        for bad in ({"status": "weird"}, {"since": "yesterday"}, {"jobs_from": "-1"},
                    {"offset": "many"}):
            answer = await http.get("/", params=bad)
            assert answer.status_code == 400 and "text/html" in answer.headers["content-type"]
        no_job = await http.get("/", params={"job": "../hello"})
        assert no_job.status_code == 404 and "no job &#39;../hello&#39;" in no_job.text


async def test_a_runs_timeline_graph_and_coloured_logs(daemon: Daemon) -> None:
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/retried/runs")).json()["run_id"]
        assert (await wait_run(http, run_id))["status"] == "succeeded"
        page = (await http.get(f"/runs/{run_id}")).text
        timeline = page[page.index('id="timeline"'):page.index('id="graph"')]
        # The retried step: a failed attempt, the 0.3 s wait, the attempt that succeeded.
        flaky = timeline[timeline.index(">flaky<"):timeline.index(">fan<")]
        assert re.findall(r'class="bar k-(\w+)"', flaky) == ["failed", "wait", "succeeded"]
        assert "waited 300 ms before attempt 2" in flaky
        assert '<details class="group" open>' in timeline and "0: a" in timeline
        graph = page[page.index('id="graph"'):page.index('id="steps"')]
        assert graph.count('<g class="n-succeeded">') == 2 and 'fan ×2' in graph

        colours = (await http.post("/api/v1/jobs/colours/runs")).json()["run_id"]
        await wait_run(http, colours)
        log = (await http.get(f"/runs/{colours}")).text
        assert '<span class="ln"><span class="a-f1">red</span> &lt;b&gt;not bold&lt;/b&gt;' \
            in log
        assert '<span class="a-bold a-f2">green</span>' in log
        only = (await http.get(f"/runs/{colours}", params={"grep": "PLAIN"})).text
        pre = only[only.index("<pre"):only.index("</pre>")]
        assert pre.count('class="ln"') == 1 and "plain" in pre and "2 lines hidden" in only
        live = (await http.get(f"/runs/{colours}", params={"live": "1"})).text
        assert "not bold" not in live and 'id="log-paint"' in live  # no log read


async def test_a_followed_log_comes_in_whole_lines(daemon: Daemon) -> None:
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/slow/runs")).json()["run_id"]
        await first_output(daemon, f"/api/v1/runs/{run_id}/steps/tick/log")
        page = (await http.get(f"/runs/{run_id}")).text
        assert 'data-state="running"' in page and 'data-refresh="2"' in page
        lines: list[str] = []
        offset, done = 0, False
        with trio.fail_after(20):
            while not done:
                answer = await http.get(f"/runs/{run_id}/log/tick", params={"offset": offset})
                assert answer.status_code == 200
                assert int(answer.headers["x-log-offset"]) == offset
                lines += re.findall(r'<span class="ln">([^<]*)</span>', answer.text)
                offset = int(answer.headers["x-log-next"])
                done = answer.headers["x-log-done"] == "1"
                await trio.sleep(0.1)
        assert lines == [f"tick {i}" for i in range(1, 7)]  # each once, none cut in two
        finished = (await http.get(f"/runs/{run_id}")).text
        assert 'data-refresh="0"' in finished and 'data-state="done"' in finished
        assert (await http.get(f"/runs/{run_id}/log/..%2F..%2Fstate.db")).status_code == 404


async def test_assets_and_the_content_security_policy(tmp_path: Path) -> None:
    async with open_daemon(tmp_path, token=TOKEN) as daemon, client(daemon) as http:
        page = (await http.get("/", headers=bearer())).text
        version = re.search(r'/assets/pipeline\.js\?v=([0-9a-f]{12})', page)
        assert version and f"/assets/pipeline.css?v={version.group(1)}" in page
        for name, kind in (("pipeline.css", "text/css"), ("pipeline.js", "text/javascript")):
            asset = await http.get(f"/assets/{name}")  # no token: nothing private in them
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
            assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (await http.get("/assets/secret.txt")).status_code in (401, 404)
        policy = (await http.get("/", headers=bearer())).headers["content-security-policy"]
        assert "script-src 'self';" in policy  # no inline script runs
        assert "<script>" not in page and "onclick" not in page
        index = await http.get("/", headers=bearer())
        assert index.headers["cache-control"] == "no-store"
        # Pages travel packed to a client that takes it (a run's logs: hundreds of KB).
        assert index.headers["content-encoding"] == "gzip" and "<main" in index.text
        unpacked = await http.get("/", headers={**bearer(), "Accept-Encoding": "identity"})
        assert "content-encoding" not in unpacked.headers and "<main" in unpacked.text


async def test_read_only_shows_no_control_and_refuses_changes(tmp_path: Path) -> None:
    async with open_daemon(tmp_path, read_only=True) as daemon, client(daemon) as http:
        dispatched, _ = await daemon.worker.trigger(daemon.catalog.jobs["hello"])
        run = await wait_run(http, dispatched.run_id)
        for path in ("/", "/jobs/hello", "/jobs/params", f"/runs/{run['id']}"):
            page = (await http.get(path)).text
            assert "data-post" not in page and "data-api" not in page, path
            assert "Run now" not in page and "Run again" not in page, path
        assert "This daemon serves read-only" in (await http.get("/jobs/params")).text
        for method, path in (("POST", "/api/v1/jobs/hello/runs"),
                             ("POST", "/api/v1/jobs/breaker/circuit/reset"),
                             ("POST", f"/api/v1/runs/{run['id']}/stop"),
                             ("DELETE", f"/api/v1/runs/{run['id']}")):
            assert error_of(await http.request(method, path), 403)["error"]["code"] == \
                "read_only"
        assert (await http.get(f"/api/v1/runs/{run['id']}")).status_code == 200
    # With a token, signing in still works: it changes nothing.
    async with open_daemon(tmp_path / "t", token=TOKEN, read_only=True) as daemon, \
            client(daemon) as http:
        signed = await http.post("/login", data={"token": TOKEN, "next": "/"})
        assert signed.status_code == 303
        error_of(await http.post("/api/v1/jobs/hello/runs", headers=bearer()), 403)
        http.cookies.clear()
        error_of(await http.post("/api/v1/jobs/hello/runs"), 401)  # who you are comes first


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """``app`` on a free loopback port (hypercorn's trio worker), for the block's time."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(hypercorn_serve, app, config)
        yield bound[0]
        nursery.cancel_scope.cancel()


async def test_operator_controls_post_to_their_routes(daemon: Daemon) -> None:
    """Pause with a reason, resume, backfill, rerun from a step and the decision log, as the
    pages offer them over the API's routes."""
    now = datetime.now(UTC)
    await trio.to_thread.run_sync(daemon.store.record_decisions, [StoredDecision(
        "hello", Outcome.NOT_MADE, now, now - timedelta(hours=1), None, "missed while down")])
    async with client(daemon) as http:
        run_id = (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"]
        await wait_run(http, run_id)
        job = (await http.get("/jobs/hello")).text
        assert re.search(r'<form class="inline" data-api="fields" '
                         r'action="/api/v1/jobs/hello/pause"', job) and 'name="reason"' in job
        assert 'action="/api/v1/jobs/hello/backfill"' in job and 'name="from"' in job
        assert "Decisions" in job and "missed while down" in job and ">not made<" in job
        assert ">Resume</button>" not in job

        # What the pause form sends (data-api="fields": {name: value}).
        paused = await http.post("/api/v1/jobs/hello/pause", json={"reason": "db migration"})
        assert paused.status_code == 200 and paused.json()["paused"]
        job = (await http.get("/jobs/hello")).text
        assert '<span class="badge s-paused" title="db migration">paused</span>' in job
        assert 'data-post="/api/v1/jobs/hello/resume"' in job
        assert "/api/v1/jobs/hello/pause" not in job  # paused: no second pause
        assert "Paused: these fires are not made until it is resumed" in job
        index = (await http.get("/")).text
        assert 'title="db migration">paused</span>' in index
        assert 'href="/?status=paused#jobs"><b>1</b>' in index
        assert (await http.post("/api/v1/jobs/hello/resume", json={})).status_code == 200
        assert "s-paused" not in (await http.get("/jobs/hello")).text

        # A form left empty is the client's mistake: a 400, never a 500.
        empty = await http.post("/api/v1/jobs/hello/backfill", json={"from": "", "to": ""})
        assert error_of(empty, 400)["error"]["code"] == "bad_body"
        # What the backfill form sends: the two instants with their offsets, the rerun choice.
        filled = await http.post("/api/v1/jobs/hello/backfill", json={
            "from": (now - timedelta(hours=3, minutes=30)).isoformat(),
            "to": (now - timedelta(minutes=30)).isoformat(), "rerun": "none"})
        assert filled.status_code == 202 and len(filled.json()["run_ids"]) == 3
        for backfilled in filled.json()["run_ids"]:  # hello allows one run at a time
            await wait_run(http, backfilled)

        # Rerun from a step: the run page lists the job's steps to start from.
        page = (await http.get(f"/runs/{run_id}")).text
        form = re.search(r'<form[^>]*action="/api/v1/runs/' + run_id + '/rerun"[^>]*>', page)
        assert form and 'name="from_step"' in page
        options = re.findall(r"<option value='([^']+)'>", page[form.start():])
        assert [html.unescape(o) for o in options] == ['"greet"', '"after"']
        again = await http.post(f"/api/v1/runs/{run_id}/rerun", json={"from_step": "after"})
        assert again.status_code == 202, again.text
        rerun = await wait_run(http, again.json()["run_id"])
        assert rerun["status"] == "succeeded"


def button(page: str, label: str) -> dict[str, str] | None:
    """A button's attributes (unescaped), found by its label; None without one."""
    found = re.search(r"<button ([^>]*)>" + re.escape(label) + "</button>", page)
    if found is None:
        return None
    return {name: html.unescape(double or single) for name, double, single in re.findall(
        r'([\w-]+)=(?:"([^"]*)"|\'([^\']*)\')', found.group(1))}


ETL = """
name: etl
steps:
  - {id: extract, run: 'echo "rows=42" >> "$PIPELINE_OUTPUT"'}
  - id: load
    needs: [extract]
    run: 'test -e FLAG && echo "loaded ${{ steps.extract.outputs.rows }}"'
  - {id: report, needs: [load], run: echo reported}
"""


async def test_a_failed_run_reruns_its_failed_steps_and_the_rerun_links_back(
        tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    etl = ETL.replace("FLAG", str(flag))
    async with open_daemon(tmp_path, jobs={"etl.yaml": etl}) as daemon, client(daemon) as http:
        failed = (await http.post("/api/v1/jobs/etl/runs")).json()["run_id"]
        assert (await wait_run(http, failed))["status"] == "failed"
        page = (await http.get(f"/runs/{failed}")).text
        again = button(page, "Rerun failed steps")
        assert again is not None, "no Rerun failed steps button"
        assert again["data-post"] == f"/api/v1/runs/{failed}/rerun" and again["data-go"] == "1"
        assert json.loads(again["data-body"]) == {"failed": True}  # CONTRACT §5
        assert "Run load" in again["title"]

        # The file changes before the rerun: the rerun runs the current version, and says so.
        (daemon.jobs_dir / "etl.yaml").write_text(etl.replace("echo reported", "echo done"))
        await trio.to_thread.run_sync(daemon.catalog.scan)
        await daemon.scheduler.load(daemon.catalog.jobs)
        flag.touch()
        # What the page's script sends: data-body to data-post.
        made = await http.post(again["data-post"], content=again["data-body"],
                               headers={"Content-Type": "application/json"})
        assert made.status_code == 202, made.text
        rerun = await wait_run(http, made.json()["run_id"])
        assert rerun["status"] == "succeeded" and rerun["rerun_of"] == failed
        assert [(s["id"], s["status"]) for s in rerun["steps"]] == [
            ("extract", "reused"), ("load", "succeeded"), ("report", "succeeded")]

        page = (await http.get(f"/runs/{rerun['id']}")).text
        facts = page[page.index('id="facts"'):page.index("</section>", page.index('id="facts"'))]
        assert re.search(r'<dd>rerun of <a class="mono" href="/runs/' + failed + '">' + failed
                         + "</a></dd>", facts), facts
        assert f"not the version run {failed} ran" in facts
        assert button(page, "Rerun failed steps") is None  # nothing failed in it
        # The original's page offers the choice still; a succeeded run's does not.
        assert button((await http.get(f"/runs/{failed}")).text, "Rerun failed steps")


LATE = """
name: hourly
schedule: every 1h
deadline: 1m
steps:
  - {id: a, run: "true"}
"""


async def test_a_late_run_says_so_on_its_page_its_jobs_page_and_the_index(
        tmp_path: Path) -> None:
    now = datetime.now(UTC)
    async with open_daemon(tmp_path, jobs={"hourly.yaml": LATE}) as daemon, \
            client(daemon) as http:
        # A past hour's run (a backfill gives it its fire), judged late as the deadline
        # loop judges it: in the store, which marks the run.
        made = await http.post("/api/v1/jobs/hourly/backfill", json={
            "from": (now - timedelta(minutes=90)).isoformat(),
            "to": (now - timedelta(minutes=30)).isoformat()})
        [run_id] = made.json()["run_ids"]
        fire = datetime.fromisoformat((await wait_run(http, run_id))["fire_time"])
        late, _ = await trio.to_thread.run_sync(partial(
            daemon.store.miss_deadline, "hourly", fire, deadline=fire + timedelta(minutes=1),
            node=None))
        assert late and (await http.get(f"/api/v1/runs/{run_id}")).json()["late"] is True
        on_time = (await http.post("/api/v1/jobs/hourly/runs")).json()["run_id"]
        await wait_run(http, on_time)

        page = (await http.get(f"/runs/{run_id}")).text
        head = page[page.index("<h1>"):page.index("</h1>")]
        assert '<span class="badge s-late" title="not succeeded by its deadline">late</span>' \
            in head
        deadline = (fire + timedelta(minutes=1)).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        assert f"<dt>Deadline</dt><dd>missed: not succeeded by {deadline}</dd>" in page
        assert "s-late" not in (await http.get(f"/runs/{on_time}")).text

        job = (await http.get("/jobs/hourly")).text
        squares = re.findall(r'<a class="(sq [^"]+)" href="/runs/([^"]+)" aria-label="([^"]+)"',
                             job)
        assert [(c, r) for c, r, _ in squares] == [("sq s-succeeded late", run_id),
                                                   ("sq s-succeeded", on_time)]
        assert squares[0][2].startswith(f"succeeded, late, run {run_id}")

        index = (await http.get("/")).text
        rows = {r: row for row in index.split("<tr>")
                for r in re.findall(r'href="/runs/([^"]+)"', row)}
        assert "s-late" in rows[run_id] and "s-late" not in rows[on_time]


async def test_operator_controls_appear_only_with_their_routes(daemon: Daemon) -> None:
    """A daemon whose app lacks those routes shows none of their controls: nothing fake."""
    gone = {"/api/v1/jobs/{name}/pause", "/api/v1/jobs/{name}/resume",
            "/api/v1/jobs/{name}/backfill", "/api/v1/runs/{run_id}/rerun",
            "/api/v1/jobs/{name}/decisions"}

    class WithoutOperators(StatusApp):
        def routes(self) -> list[Route]:
            return [r for r in super().routes() if r.path not in gone]

    async with serve_app(create_app(daemon, status=WithoutOperators(daemon))) as base, \
            httpx.AsyncClient(base_url=base, timeout=10) as http:
        dispatched, _ = await daemon.worker.trigger(daemon.catalog.jobs["hello"])
        await wait_run(http, dispatched.run_id)
        shown = ((await http.get("/jobs/hello")).text
                 + (await http.get(f"/runs/{dispatched.run_id}")).text)
        for absent in ("/pause", "/resume", "/backfill", "/rerun", "Decisions"):
            assert absent not in shown, absent
        assert "Run now" in shown  # the controls whose routes are there stay


@pytest.mark.slow
def test_pipeline_serve_read_only(tmp_path: Path) -> None:
    """``pipeline serve --read-only`` as a user starts it."""
    import socket
    import subprocess
    import sys
    import time

    from tests.test_http import write_jobs

    jobs_dir, state_dir = write_jobs(tmp_path, {"hello.yaml": JOBS["hello.yaml"]})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--read-only",
                             "--listen", f"127.0.0.1:{port}", "--jobs-dir", str(jobs_dir),
                             "--state-dir", str(state_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pipeline serve did not answer"
            time.sleep(0.1)
        assert "Run now" not in httpx.get(f"{base}/jobs/hello").text
        refused = httpx.post(f"{base}/api/v1/jobs/hello/runs")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "read_only"
    finally:
        proc.terminate()
        proc.wait(30)

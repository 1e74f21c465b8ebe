"""Notifications and deadlines through a real daemon: a real webhook server and a real SMTP
server hear about failures and missed deadlines within seconds; each outcome is kept with its
run and in the decision log (issue 12 §4)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from pipeline.daemon import Daemon, open_daemon
from pipeline.model import RunStatus
from pipeline.runners import load_runners
from pipeline.store.records import Outcome
from pipeline.store.sqlite import SqliteStore

from .test_notify import Endpoint, Mailbox, endpoint, plain_mailbox  # noqa: F401

pytestmark = pytest.mark.slow


@asynccontextmanager
async def daemon_with(tmp_path: Path, files: dict[str, str]) -> AsyncIterator[Daemon]:
    jobs = tmp_path / "jobs.d"
    jobs.mkdir(exist_ok=True)
    for name, text in files.items():
        (jobs / name).write_text(textwrap.dedent(text))
    store = SqliteStore.open(tmp_path / "state")
    try:
        async with open_daemon(jobs_dir=jobs, state_dir=tmp_path / "state", store=store,
                               runners=load_runners(plugins=False)[0]) as daemon:
            yield daemon
    finally:
        store.close()


async def test_a_failure_reaches_a_webhook_and_a_mailbox_within_seconds(
        tmp_path: Path, endpoint: Endpoint, plain_mailbox: Mailbox) -> None:  # noqa: F811
    files = {
        "settings.yaml": f"""
            kind: settings
            smtp: {{host: 127.0.0.1, port: {plain_mailbox.port}, starttls: false,
                    from: pipeline@example.com}}
            defaults:
              notify: [{{when: [failure], email: {{to: [ops@example.com]}}}}]
        """,
        "boom.yaml": f"""
            notify:
              - when: [failure]
                webhook: {{url: "{endpoint.url}/ok"}}
              - when: [failure]
                email: {{to: [ops@example.com]}}
            steps:
              - {{id: s, run: "echo about to fail; exit 3"}}
        """,
    }
    async with daemon_with(tmp_path, files) as daemon:
        dispatched, _ = await daemon.worker.trigger(daemon.catalog.jobs["boom"])
        [request] = await endpoint.wait_for(1, within=10)
        with trio.fail_after(10):
            while not plain_mailbox.received:  # noqa: ASYNC110 - another thread's list
                await trio.sleep(0.05)
        event = request.json()
        assert event["event"] == "failure" and event["job"] == "boom"
        assert event["run_id"] == dispatched.run_id and event["status"] == "failed"
        with trio.fail_after(10):
            while True:
                run = daemon.store.run(dispatched.run_id)
                assert run is not None
                if len(run.notifications) >= 2:
                    break
                await trio.sleep(0.05)
    assert run.status is RunStatus.FAILED
    assert {(n["event"], n["status"]) for n in run.notifications} == {("failure", "delivered")}
    mail = plain_mailbox.received[0]
    assert mail.rcpt_tos == ["ops@example.com"] and b"boom" in mail.content
    decided = SqliteStore.open(tmp_path / "state").decisions("boom")
    assert {d.outcome for d in decided} >= {Outcome.FIRED, Outcome.NOTIFIED}


async def test_a_missed_deadline_is_late_once_and_says_so(tmp_path: Path,
                                                          endpoint: Endpoint) -> None:  # noqa: F811
    files = {
        "slow.yaml": f"""
            schedule: every 2s
            deadline: 1s
            notify:
              - when: [late]
                webhook: {{url: "{endpoint.url}/ok"}}
            steps:
              - {{id: s, run: "sleep 3"}}
        """,
    }
    async with daemon_with(tmp_path, files) as daemon:
        [request] = await endpoint.wait_for(1, within=15)
        late = request.json()
        assert late["event"] == "late" and late["job"] == "slow"
        body = daemon.metrics.render().decode()
        await trio.sleep(0.5)
    assert 'pipeline_deadline_missed_total{job="slow"}' in body
    store = SqliteStore.open(tmp_path / "state")
    lates = [d for d in store.decisions("slow") if d.outcome is Outcome.LATE]
    assert lates and len({d.fire_time for d in lates}) == len(lates)  # once per fire
    marked = [r for r in store.runs(job="slow") if store.run(r.id).late]  # type: ignore[union-attr]
    assert marked


async def test_an_alert_pending_at_a_restart_is_sent_and_the_cooldown_holds(
        tmp_path: Path, endpoint: Endpoint) -> None:  # noqa: F811
    """A restarted daemon is a node of another name (its default name is new at each start):
    what the old one left pending is taken over and sent; a repeat within the cooldown is
    not sent, and that is recorded with the run and in the decision log."""
    files = {
        "boom.yaml": f"""
            notify:
              - when: [failure]
                webhook: {{url: "{endpoint.url}/hang"}}
                cooldown: 1h
            steps:
              - {{id: s, run: "exit 3"}}
        """,
    }
    async with daemon_with(tmp_path, files) as daemon:
        first, _ = await daemon.worker.trigger(daemon.catalog.jobs["boom"])
        await endpoint.wait_for(1, within=10)  # it hangs: the daemon stops meanwhile
        name = daemon.lease.node.name
    endpoint.release.set()  # the endpoint answers at once from now on
    async with daemon_with(tmp_path, files) as daemon:
        assert daemon.lease.node.name != name
        await endpoint.wait_for(2, within=10)
        second, _ = await daemon.worker.trigger(daemon.catalog.jobs["boom"])
        with trio.fail_after(10):
            while True:
                run = daemon.store.run(second.run_id)
                assert run is not None
                if run.notifications:
                    break
                await trio.sleep(0.05)
        sent = daemon.store.run(first.run_id)
    assert [r.json()["run_id"] for r in endpoint.requests] == [first.run_id] * 2
    assert sent is not None and [n["status"] for n in sent.notifications] == ["delivered"]
    [suppressed] = run.notifications
    assert suppressed["status"] == "suppressed" and "within the cooldown of 1h" in str(
        suppressed["error"])
    decided = SqliteStore.open(tmp_path / "state").decisions("boom")
    assert Outcome.NOTIFY_SUPPRESSED in {d.outcome for d in decided}

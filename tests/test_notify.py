"""Notifications (pipeline.notify): real endpoints on this machine (an HTTP server on port 0
for webhooks, Slack and pings, hostile ones included; an SMTP server with STARTTLS; local
commands), persistence through real files, and retries and cooldown on trio's virtual clock."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import ssl
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from pipeline import spec
from pipeline.engine import run_job
from pipeline.events import Event, RunFinished, RunStarted
from pipeline.model import Job, NotifyEvent, RunStatus, Trigger
from pipeline.notify.message import Message
from pipeline.notify.notice import Notice, NotifyStatus, Outcome, end_events
from pipeline.notify.notifier import Notifier
from pipeline.notify.outbox import JsonFile
from pipeline.runrecords import RunRecord
from pipeline.settings import load_settings
from pipeline.store.sqlite import SqliteStore

FIRE = datetime(2026, 11, 28, 2, 30, tzinfo=UTC)
FAST = (0.05, 0.1)  # retry delays for tests against real endpoints
SECRET = "s3cret-hook-token"


# -- a real HTTP endpoint --------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Endpoint:
    """An HTTP server on 127.0.0.1, port 0: /ok... answers 200, /fail 500, /hang never (until
    the test ends), /flaky 500 the first time then 200. Every request is kept."""

    url: str
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    flaky_left: int = 1

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]

    async def wait_for(self, count: int, *, within: float = 10) -> list[Request]:
        # The server's threads cannot set a trio.Event: look every 10 ms.
        with trio.fail_after(within):
            while True:
                with self.lock:
                    if len(self.requests) >= count:
                        return list(self.requests)
                await trio.sleep(0.01)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    found = Endpoint("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with found.lock:
                found.requests.append(Request("POST", self.path, dict(self.headers), body))
            status = 200
            if self.path.startswith("/hang"):
                found.release.wait(30)
            elif self.path.startswith("/fail"):
                status = 500
            elif self.path.startswith("/flaky"):
                with found.lock:
                    if found.flaky_left > 0:
                        found.flaky_left -= 1
                        status = 500
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the client gave up (a timeout): nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield found
    finally:
        found.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- helpers ----------------------------------------------------------------------------------


def make_job(tmp_path: Path, text: str, *, settings_text: str | None = None) -> Job:
    if settings_text is not None:
        (tmp_path / "settings.yaml").write_text(textwrap.dedent(settings_text))
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    settings = load_settings(tmp_path / "settings.yaml") if settings_text else None
    return spec.load_job(path, settings=settings)


def record(kind: NotifyEvent = NotifyEvent.FAILURE, *, job: str = "job",
           status: RunStatus = RunStatus.FAILED, reason: str | None = "step a failed",
           run_id: str = "20261128T023000-0000abcd",
           outputs: Mapping[str, str] | None = None) -> RunRecord:
    return RunRecord(run_id, job, status, Trigger.SCHEDULE, fire_time=FIRE,
                     started_at=FIRE, finished_at=FIRE, reason=reason,
                     outputs=outputs or {"rows": "42"})


class Outcomes:
    """The outcomes a notifier reports, as a list, with a way to wait for them."""

    def __init__(self) -> None:
        self.seen: list[Outcome] = []
        self.arrived = trio.Event()

    async def __call__(self, outcome: Outcome) -> None:
        self.seen.append(outcome)
        self.arrived.set()

    async def wait_for(self, count: int, *, within: float = 10) -> list[Outcome]:
        with trio.fail_after(within):
            while len(self.seen) < count:
                await self.arrived.wait()
                self.arrived = trio.Event()
        return list(self.seen)


@asynccontextmanager
async def serving(notifier: Notifier) -> AsyncIterator[Notifier]:
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.serve)
        yield notifier
        nursery.cancel_scope.cancel()


async def plain_call(function: Callable[..., Any], *args: Any) -> Any:
    """An offload that calls in the event loop: on the virtual clock, no thread runs."""
    return function(*args)


def webhook_job(tmp_path: Path, path: str, *, extra: str = "", when: str = "[failure]",
                timeout: str = "2s") -> Job:
    return make_job(tmp_path, f"""\
        name: job
        secrets: {{HOOK: {{env: HOOK_URL}}, TOKEN: {{env: API_TOKEN}}}}
        steps:
          - {{id: a, run: "true"}}
        notify:
          - when: {when}
            webhook:
              url: "${{{{ secrets.HOOK }}}}{path}"
              headers: {{Authorization: "Bearer ${{{{ secrets.TOKEN }}}}", X-Team: ops}}
            timeout: {timeout}
        {extra}""")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def environ(endpoint: Endpoint) -> dict[str, str]:
    return {"HOOK_URL": endpoint.url, "API_TOKEN": SECRET, "PATH": os.environ["PATH"]}


# -- the pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "previous", "events"), [
    (RunStatus.SUCCEEDED, None, (NotifyEvent.SUCCESS,)),
    (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED, (NotifyEvent.SUCCESS,)),
    (RunStatus.SUCCEEDED, RunStatus.FAILED, (NotifyEvent.SUCCESS, NotifyEvent.RECOVERY)),
    (RunStatus.SUCCEEDED, RunStatus.INTERRUPTED, (NotifyEvent.SUCCESS, NotifyEvent.RECOVERY)),
    (RunStatus.FAILED, RunStatus.FAILED, (NotifyEvent.FAILURE,)),
    (RunStatus.INTERRUPTED, None, (NotifyEvent.FAILURE,)),
    (RunStatus.SKIPPED, RunStatus.FAILED, (NotifyEvent.SKIPPED,)),
    (RunStatus.CANCELLED, RunStatus.FAILED, ()),
])
def test_end_events(status: RunStatus, previous: RunStatus | None,
                    events: tuple[NotifyEvent, ...]) -> None:
    assert end_events(status, previous) == events


def test_a_notice_round_trips_through_its_saved_form() -> None:
    notice = Notice.of_run(NotifyEvent.RETRY, record(), step="a", attempt=2, reason="exit 1")
    assert Notice.from_dict(json.loads(json.dumps(notice.as_dict()))) == notice
    payload = notice.payload("http://127.0.0.1:8765/")
    assert payload["url"] == "http://127.0.0.1:8765/runs/20261128T023000-0000abcd"
    assert payload["text"] == ("job: step a of run 20261128T023000-0000abcd failed "
                               "(attempt 2), trying again: exit 1")


# -- webhooks, Slack and pings against a real server ------------------------------------------


async def test_a_webhook_gets_the_event_as_json_with_secrets_read_when_it_is_sent(
        tmp_path: Path, endpoint: Endpoint) -> None:
    job = webhook_job(tmp_path, "/ok/hook")
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, environ=environ(endpoint), retry_delays=FAST,
                        base_url="http://status.example:8765")
    async with serving(notifier):
        notifier.run_ended(job, record(reason=f"token {SECRET} leaked", outputs={
            "rows": "42", "echo": f"x{SECRET}x"}), RunStatus.SUCCEEDED)
        (request,) = await endpoint.wait_for(1)
        (outcome,) = await outcomes.wait_for(1)
    assert request.path == "/ok/hook"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert request.headers["X-Team"] == "ops"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json()
    assert body == {
        "version": 1, "event": "failure", "job": "job", "run_id": "20261128T023000-0000abcd",
        "status": "failed", "trigger": "schedule", "fire_time": "2026-11-28T02:30:00+00:00",
        "at": "2026-11-28T02:30:00+00:00", "reason": "token *** leaked",
        "outputs": {"rows": "42", "echo": "x***x"}, "step": None, "attempt": None,
        "deadline": None, "url": "http://status.example:8765/runs/20261128T023000-0000abcd",
        "text": "job: run 20261128T023000-0000abcd failed: token *** leaked",
    }
    assert (outcome.status, outcome.tries, outcome.error) == (NotifyStatus.DELIVERED, 1, None)
    assert (outcome.target, outcome.event, outcome.job) == (
        "notify[0] webhook", NotifyEvent.FAILURE, "job")
    assert outcome.fire_time == FIRE
    assert notifier.statistics().delivered == 1


async def test_only_the_events_a_target_wants_are_sent(tmp_path: Path,
                                                       endpoint: Endpoint) -> None:
    job = webhook_job(tmp_path, "/ok", when="[failure, recovery]")
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, environ=environ(endpoint), retry_delays=FAST)
    async with serving(notifier):
        notifier.run_started(job, record(status=RunStatus.RUNNING))
        notifier.run_ended(job, record(status=RunStatus.SUCCEEDED), RunStatus.FAILED)
        await outcomes.wait_for(1)
        await notifier.flush()
    assert [r.json()["event"] for r in endpoint.requests] == ["recovery"]


async def test_slack_gets_a_message_with_a_link_to_the_run(tmp_path: Path,
                                                           endpoint: Endpoint) -> None:
    job = make_job(tmp_path, f"""\
        steps: [{{id: a, run: "true"}}]
        notify:
          - slack: {{webhook_url: "{endpoint.url}/ok/slack", channel: "#ops",
                     username: pipeline}}
        """)
    notifier = Notifier(base_url="http://status.example", retry_delays=FAST)
    async with serving(notifier):
        notifier.notify(job, Notice.of_run(NotifyEvent.FAILURE, record(
            job="job", reason="a <b> & c")))
        (request,) = await endpoint.wait_for(1)
    assert request.json() == {
        "text": ":red_circle: job: run 20261128T023000-0000abcd failed: a &lt;b&gt; &amp; c "
                "(<http://status.example/runs/20261128T023000-0000abcd|"
                "20261128T023000-0000abcd>)",
        "channel": "#ops", "username": "pipeline"}


async def test_a_ping_gets_start_success_and_fail_in_order(tmp_path: Path,
                                                           endpoint: Endpoint) -> None:
    job = make_job(tmp_path, f"""\
        steps: [{{id: a, run: "true"}}]
        notify:
          - ping: "{endpoint.url}/ping/0f3c/"
          - {{ping: "{endpoint.url}/ping/late?x=1", when: [late, retry]}}
        """)
    notifier = Notifier(retry_delays=FAST)
    async with serving(notifier):
        for status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            notifier.run_started(job, record(status=RunStatus.RUNNING))
            notifier.run_ended(job, record(status=status, reason="boom"), None)
        notifier.deadline_missed(job, FIRE, FIRE, None)
        requests = await endpoint.wait_for(5)
    mine = [r for r in requests if "/0f3c" in r.path]
    # The success ping is the URL as written; the others go below it.
    assert [r.path for r in mine] == ["/ping/0f3c/start", "/ping/0f3c/", "/ping/0f3c/start",
                                      "/ping/0f3c/fail"]
    assert mine[-1].body.decode() == "job: run 20261128T023000-0000abcd failed: boom"
    (late,) = [r for r in requests if "/late" in r.path]
    assert late.path == "/ping/late/fail?x=1"
    assert "the fire produced no run" in late.body.decode()


async def test_a_failing_endpoint_is_tried_three_times_then_reported(
        tmp_path: Path, endpoint: Endpoint) -> None:
    job = webhook_job(tmp_path, f"/fail/{SECRET}")
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, environ=environ(endpoint), retry_delays=FAST)
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1)
    assert endpoint.paths() == [f"/fail/{SECRET}"] * 3
    assert (outcome.status, outcome.tries) == (NotifyStatus.FAILED, 3)
    assert outcome.error == "answered 500 Internal Server Error"
    assert outcome.as_dict()["status"] == "failed"
    assert notifier.statistics().failed == 1 and notifier.statistics().pending == 0


async def test_a_flaky_endpoint_is_tried_again(tmp_path: Path, endpoint: Endpoint) -> None:
    job = webhook_job(tmp_path, "/flaky")
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, environ=environ(endpoint), retry_delays=FAST)
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1)
    assert (outcome.status, outcome.tries) == (NotifyStatus.DELIVERED, 2)


@pytest.mark.slow  # waits for real timeouts (seconds)
async def test_a_hanging_endpoint_times_out_and_holds_up_nobody_else(
        tmp_path: Path, endpoint: Endpoint) -> None:
    job = make_job(tmp_path, f"""\
        steps: [{{id: a, run: "true"}}]
        notify:
          - {{webhook: {{url: "{endpoint.url}/hang"}}, timeout: 0.5s}}
          - {{webhook: {{url: "{endpoint.url}/ok/quick"}}}}
        """)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, retry_delays=FAST)
    async with serving(notifier):
        began = trio.current_time()
        for _ in range(2):
            notifier.run_ended(job, record(), None)
        assert trio.current_time() - began < 0.1  # notify never waits
        # The quick target's notices are all out before the hanging one's first try ends.
        quick = await outcomes.wait_for(2)
        assert [o.target for o in quick] == ["notify[1] webhook"] * 2
        assert trio.current_time() - began < 0.5
        hung = [o for o in await outcomes.wait_for(4) if o.target == "notify[0] webhook"]
    assert [(o.status, o.tries, o.error) for o in hung] == [
        (NotifyStatus.FAILED, 3, "timed out after 0.5s")] * 2


async def test_a_hostile_endpoint_never_slows_a_run(tmp_path: Path,
                                                    endpoint: Endpoint) -> None:
    job = make_job(tmp_path, f"""\
        name: job
        steps:
          - {{id: a, run: "true"}}
          - {{id: b, needs: [a], run: "true"}}
        notify:
          - {{when: [start, success, failure], webhook: {{url: "{endpoint.url}/hang"}},
             timeout: 5s}}
          - {{when: [start, success], webhook: {{url: "{endpoint.url}/fail"}}}}
        """)
    notifier = Notifier(retry_delays=(5.0, 5.0))
    state = tmp_path / "state"

    async def emit(event: Event) -> None:
        # What the daemon does as the journal sees a run's events.
        if isinstance(event, RunStarted):
            notifier.run_started(job, record(status=RunStatus.RUNNING))
        elif isinstance(event, RunFinished):
            notifier.run_ended(job, record(status=event.status), None)

    async with serving(notifier):
        began = trio.current_time()
        result = await run_job(job, run_id="20261128T023000-0000abcd", state_dir=state,
                               emit=emit)
        took = trio.current_time() - began
        assert result.status is RunStatus.SUCCEEDED
        assert notifier.statistics().pending == 4
    assert took < 1.0


# -- local commands ----------------------------------------------------------------------------


async def test_a_command_gets_the_event_as_json_on_stdin(tmp_path: Path) -> None:
    out, env = tmp_path / "event.json", tmp_path / "event.env"
    job = make_job(tmp_path, f"""\
        steps: [{{id: a, run: "true"}}]
        notify:
          - command: [sh, -c, 'cat > {out}; echo "$PIPELINE_NOTIFY_EVENT $PIPELINE_JOB" > {env}']
        """)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, retry_delays=FAST)
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1)
    assert outcome.status is NotifyStatus.DELIVERED, outcome.error
    event = json.loads(read(out))
    assert (event["event"], event["job"], event["outputs"]) == ("failure", "job", {"rows": "42"})
    assert read(env) == "failure job\n"


@pytest.mark.slow  # waits for real timeouts (seconds)
async def test_a_command_past_its_timeout_is_killed_with_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    job = make_job(tmp_path, f"""\
        steps: [{{id: a, run: "true"}}]
        notify:
          - command: [sh, -c, 'sleep 60 & echo $! > {pids}; wait']
            timeout: 0.3s
        """)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, retry_delays=(0.01, 0.01))
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1, within=20)
    assert (outcome.status, outcome.tries, outcome.error) == (
        NotifyStatus.FAILED, 3, "timed out after 0.3s")
    assert not alive(int(pids.read_text()))


async def test_a_failing_command_says_how_it_ended(tmp_path: Path) -> None:
    job = make_job(tmp_path, """\
        steps: [{id: a, run: "true"}]
        notify:
          - command: [sh, -c, 'echo first; echo "pager is down" >&2; exit 3']
          - command: [/nonexistent/page-oncall]
        """)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, retry_delays=(0.01, 0.01))
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        seen = sorted(await outcomes.wait_for(2), key=lambda o: o.target)
    assert [(o.status, o.error) for o in seen] == [
        (NotifyStatus.FAILED, "sh ended with exit status 3: pager is down"),
        (NotifyStatus.FAILED, "cannot start '/nonexistent/page-oncall': No such file or "
                              "directory")]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaps yet does not: it is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


# -- email over SMTP with STARTTLS -------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    tls: ssl.SSLContext  # what the client trusts
    received: list[Any] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # Listening on port 0: learn the port before aiosmtpd connects to itself.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture(params=[True], ids=["starttls"])
def mailbox(request: pytest.FixtureRequest) -> Iterator[Mailbox]:
    yield from _mailbox(starttls=request.param)


@pytest.fixture
def plain_mailbox() -> Iterator[Mailbox]:
    yield from _mailbox(starttls=False)


def _mailbox(*, starttls: bool) -> Iterator[Mailbox]:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    box = Mailbox(0, client_tls)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.received.append(envelope)
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        box.logins.append((data.login, data.password))
        return AuthResult(success=(data.login, data.password) == (b"pipeline", b"pw-123"))

    options: dict[str, Any] = {"tls_context": server_tls, "require_starttls": True,
                               "authenticator": authenticate, "auth_required": True} \
        if starttls else {}
    controller = _Controller(Handler(), hostname="127.0.0.1", port=0, **options)
    controller.start()
    box.port = controller.port
    try:
        yield box
    finally:
        controller.stop()


def mail_settings(port: int, *, starttls: bool = True) -> str:
    return f"""\
        kind: settings
        smtp: {{host: 127.0.0.1, port: {port}, starttls: {str(starttls).lower()},
                from: pipeline@example.com, username: pipeline,
                password: {{env: SMTP_PASSWORD}}}}
        defaults:
          notify: [{{when: [failure, late], email: {{to: [ops@example.com, dev@example.com]}}}}]
        """


async def test_an_email_goes_through_starttls_with_a_login(tmp_path: Path,
                                                           mailbox: Mailbox) -> None:
    settings_text = mail_settings(mailbox.port)
    job = make_job(tmp_path, 'steps: [{id: a, run: "true"}]\n', settings_text=settings_text)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, settings=load_settings(tmp_path / "settings.yaml"),
                        environ={"SMTP_PASSWORD": "pw-123"}, tls=mailbox.tls,
                        retry_delays=FAST, base_url="http://status.example")
    async with serving(notifier):
        notifier.run_ended(job, record(reason="step dump failed: exit status 1"), None)
        (outcome,) = await outcomes.wait_for(1)
    assert outcome.status is NotifyStatus.DELIVERED, outcome.error
    assert mailbox.logins == [(b"pipeline", b"pw-123")]
    (envelope,) = mailbox.received
    assert envelope.mail_from == "pipeline@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    mail = message_from_bytes(envelope.original_content)
    assert mail["Subject"] == "[pipeline] job: failure"
    assert mail["To"] == "ops@example.com, dev@example.com"
    text = mail.get_payload(decode=True).decode()
    assert text.startswith("job: run 20261128T023000-0000abcd failed: step dump failed")
    assert "url: http://status.example/runs/20261128T023000-0000abcd" in text
    assert "  rows: 42" in text


async def test_email_refuses_a_server_without_starttls(tmp_path: Path,
                                                       plain_mailbox: Mailbox) -> None:
    job = make_job(tmp_path, 'steps: [{id: a, run: "true"}]\n',
                   settings_text=mail_settings(plain_mailbox.port))
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, settings=load_settings(tmp_path / "settings.yaml"),
                        environ={"SMTP_PASSWORD": "pw-123"}, retry_delays=(0.01, 0.01))
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1)
    assert outcome.status is NotifyStatus.FAILED
    assert outcome.error == (f"127.0.0.1:{plain_mailbox.port} does not offer STARTTLS; "
                             "nothing was sent (starttls: false allows plain SMTP)")
    assert plain_mailbox.received == []


async def test_email_without_starttls_when_the_settings_say_so(tmp_path: Path,
                                                               plain_mailbox: Mailbox) -> None:
    settings_text = mail_settings(plain_mailbox.port, starttls=False).replace(
        ", username: pipeline,\n                password: {env: SMTP_PASSWORD}", "")
    job = make_job(tmp_path, 'steps: [{id: a, run: "true"}]\n', settings_text=settings_text)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, settings=load_settings(tmp_path / "settings.yaml"),
                        retry_delays=FAST)
    async with serving(notifier):
        notifier.deadline_missed(job, FIRE, FIRE, record(status=RunStatus.RUNNING))
        (outcome,) = await outcomes.wait_for(1)
    assert outcome.status is NotifyStatus.DELIVERED, outcome.error
    mail = message_from_bytes(plain_mailbox.received[0].original_content)
    assert mail["Subject"] == "[pipeline] job: late"


# -- secrets -----------------------------------------------------------------------------------


async def test_a_secret_that_cannot_be_read_fails_the_notification_at_once(
        tmp_path: Path, endpoint: Endpoint) -> None:
    job = webhook_job(tmp_path, "/ok")
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, environ={"HOOK_URL": endpoint.url})
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1)
    assert (outcome.status, outcome.tries) == (NotifyStatus.FAILED, 0)
    assert outcome.error == ("cannot be sent: TOKEN: environment variable API_TOKEN is not "
                             "set")
    assert endpoint.requests == []


async def test_default_targets_read_the_settings_secrets(
        tmp_path: Path, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    job = make_job(tmp_path, 'steps: [{id: a, run: "true"}]\n', settings_text="""\
        kind: settings
        secrets: {HOOK: {file: hook-url}}
        defaults:
          notify: [{webhook: {url: "${{ secrets.HOOK }}/ok/default"}}]
        """)
    (tmp_path / "hook-url").write_text(endpoint.url + "\n")
    settings = load_settings(tmp_path / "settings.yaml")
    assert settings.secrets["HOOK"].file == "hook-url"
    outcomes = Outcomes()
    monkeypatch.chdir(tmp_path)  # the secret file's path is relative
    notifier = Notifier(report=outcomes, settings=settings)
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        (outcome,) = await outcomes.wait_for(1)
    assert outcome.status is NotifyStatus.DELIVERED, outcome.error
    assert endpoint.paths() == ["/ok/default"]


async def test_secrets_never_reach_the_log_or_the_saved_state(
        tmp_path: Path, endpoint: Endpoint, capfd: pytest.CaptureFixture[str]) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    saved = JsonFile(tmp_path / "pending.json")
    try:
        job = webhook_job(tmp_path, f"/fail?key={SECRET}")
        outcomes = Outcomes()
        notifier = Notifier(report=outcomes, environ=environ(endpoint), retry_delays=FAST,
                            save=saved.save, load=saved.load)
        async with serving(notifier):
            notifier.run_ended(job, record(reason=SECRET), None)
            await outcomes.wait_for(1)
    finally:
        logger.remove(sink)
    assert len(endpoint.requests) == 3
    assert lines and not [line for line in lines if SECRET in line]
    assert SECRET not in (tmp_path / "pending.json").read_text()
    assert not [o for o in outcomes.seen if SECRET in str(o)]


# -- persistence -------------------------------------------------------------------------------


def sqlite_functions(path: Path) -> tuple[Callable[[list[dict[str, Any]]], None],
                                          Callable[[], list[dict[str, Any]]]]:
    """save/load on a real SQLite file, as the daemon's store backs them."""

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE IF NOT EXISTS pending (id TEXT PRIMARY KEY, body TEXT)")
        return db

    def save(pending: list[dict[str, Any]]) -> None:
        db = connect()
        with db:
            db.execute("DELETE FROM pending")
            db.executemany("INSERT INTO pending VALUES (?, ?)",
                           [(p["id"], json.dumps(p)) for p in pending])
        db.close()

    def load() -> list[dict[str, Any]]:
        db = connect()
        rows = db.execute("SELECT body FROM pending ORDER BY rowid").fetchall()
        db.close()
        return [json.loads(body) for (body,) in rows]

    return save, load


@pytest.mark.parametrize("backend", ["json", "sqlite"])
async def test_an_undelivered_alert_survives_a_restart(tmp_path: Path, endpoint: Endpoint,
                                                       backend: str) -> None:
    if backend == "json":
        file = JsonFile(tmp_path / "pending.json")
        save, load = file.save, file.load
    else:
        save, load = sqlite_functions(tmp_path / "state.db")
    down = make_job(tmp_path, f"""\
        name: job
        steps: [{{id: a, run: "true"}}]
        notify:
          - {{webhook: {{url: "{endpoint.url}/hang"}}, timeout: 5s}}
          - {{webhook: {{url: "{endpoint.url}/ok/second"}}, when: [success]}}
        """)
    first = Notifier(save=save, load=load, retry_delays=FAST)
    async with serving(first):
        first.run_ended(down, record(reason="disk full"), None)
        await endpoint.wait_for(1)  # the first try hangs: the daemon stops meanwhile
    saved = load()
    assert len(saved) == 1 and saved[0]["notice"]["reason"] == "disk full"
    assert saved[0]["tries"] == 0 and saved[0]["target"]["url"].endswith("/hang")

    # The endpoint is back (answers at once) when the daemon starts again.
    endpoint.release.set()
    outcomes = Outcomes()
    second = Notifier(report=outcomes, save=save, load=load, retry_delays=FAST)
    async with serving(second):
        (outcome,) = await outcomes.wait_for(1)
        await second.flush()
    assert (outcome.status, outcome.event, outcome.run_id) == (
        NotifyStatus.DELIVERED, NotifyEvent.FAILURE, "20261128T023000-0000abcd")
    assert [r.json()["reason"] for r in endpoint.requests] == ["disk full"] * 2
    assert load() == []  # saved on the way out


async def test_a_saved_entry_that_cannot_be_read_is_skipped(tmp_path: Path,
                                                           endpoint: Endpoint) -> None:
    file = JsonFile(tmp_path / "pending.json")
    job = webhook_job(tmp_path, "/ok/kept")
    first = Notifier(save=file.save, environ=environ(endpoint))
    first.notify(job, Notice.of_run(NotifyEvent.FAILURE, record()))  # not serving: kept
    await first._outbox.save_now()
    entries = file.load()
    file.save([{"id": "x", "notice": {"kind": "nope"}}, *entries, "junk"])  # type: ignore[list-item]
    outcomes = Outcomes()
    second = Notifier(report=outcomes, load=file.load, environ=environ(endpoint))
    async with serving(second):
        (outcome,) = await outcomes.wait_for(1)
    assert outcome.status is NotifyStatus.DELIVERED and endpoint.paths() == ["/ok/kept"]


# -- backoff, cooldown and limits on the virtual clock --------------------------------------------


class Script:
    """A ``send`` that fails as many times as told, noting when each try came."""

    def __init__(self, failures: int = 0, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang
        self.tries: list[tuple[float, Message]] = []

    async def __call__(self, message: Message) -> None:
        self.tries.append((trio.current_time(), message))
        if self.hang:
            await trio.sleep_forever()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("connection refused")


def ping_job(tmp_path: Path, cooldown: str = "0s") -> Job:
    return make_job(tmp_path, f"""\
        steps: [{{id: a, run: "true"}}]
        notify:
          - {{ping: "https://hc.example/ping/x", when: [failure, success], cooldown: {cooldown}}}
        """)


async def test_tries_back_off(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    script = Script(failures=2)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, send=script, offload=plain_call)
    async with serving(notifier):
        began = trio.current_time()
        notifier.run_ended(ping_job(tmp_path), record(), None)
        (outcome,) = await outcomes.wait_for(1, within=60)
    assert [round(at - began, 3) for at, _ in script.tries] == [0, 2, 12]
    assert (outcome.status, outcome.tries) == (NotifyStatus.DELIVERED, 3)


async def test_three_failed_tries_give_up(tmp_path: Path,
                                          autojump_clock: trio.testing.MockClock) -> None:
    script = Script(failures=5)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, send=script, offload=plain_call)
    async with serving(notifier):
        notifier.run_ended(ping_job(tmp_path), record(), None)
        (outcome,) = await outcomes.wait_for(1, within=60)
    assert len(script.tries) == 3
    assert (outcome.status, outcome.tries, outcome.error) == (
        NotifyStatus.FAILED, 3, "connection refused")


async def test_cooldown_suppresses_repeats_of_one_event(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    job = ping_job(tmp_path, cooldown="30m")
    script = Script()
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, send=script, offload=plain_call)
    async with serving(notifier):
        notifier.run_ended(job, record(), None)
        await trio.sleep(60)
        notifier.run_ended(job, record(), None)  # suppressed: within 30m
        notifier.run_ended(job, record(status=RunStatus.SUCCEEDED), None)  # another event
        await trio.sleep(29 * 60 + 1)
        notifier.run_ended(job, record(), None)  # 30m01s after the first: sent
        await outcomes.wait_for(4)
    assert [(o.event, o.status) for o in outcomes.seen] == [
        (NotifyEvent.FAILURE, NotifyStatus.DELIVERED),
        (NotifyEvent.FAILURE, NotifyStatus.SUPPRESSED),
        (NotifyEvent.SUCCESS, NotifyStatus.DELIVERED),
        (NotifyEvent.FAILURE, NotifyStatus.DELIVERED)]
    assert outcomes.seen[1].error == ("the same event was sent 1m ago, within the cooldown "
                                      "of 30m")
    assert [m.url for _, m in script.tries] == ["https://hc.example/ping/x/fail",
                                                "https://hc.example/ping/x",
                                                "https://hc.example/ping/x/fail"]


async def test_a_cooldown_holds_across_a_restart_and_between_nodes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The cooldown is kept in the store: a node that starts afresh (or another node of a
    cluster, on the same database) does not send what was sent within it, while a delivery
    taken up again after a restart is not suppressed by its own claim."""
    job = ping_job(tmp_path, cooldown="30m")
    store = SqliteStore.open(tmp_path / "state")
    claim = functools.partial(_claim, store)
    file = JsonFile(tmp_path / "pending.json")
    try:
        first = Notifier(send=Script(hang=True), save=file.save, claim=claim, offload=plain_call,
                         clock=trio_wall_clock)
        async with serving(first):
            first.run_ended(job, record(), None)  # claimed, then its try hangs: stopped
            await trio.sleep(1)
        assert len(file.load()) == 1

        script = Script()
        outcomes = Outcomes()
        second = Notifier(report=outcomes, send=script, load=file.load, claim=claim,
                          offload=plain_call, clock=trio_wall_clock)
        async with serving(second):
            await outcomes.wait_for(1)  # the saved one: its own claim lets it go
            await trio.sleep(60)
            second.run_ended(job, record(), None)  # a minute after the first was claimed
            await outcomes.wait_for(2)
            await trio.sleep(30 * 60)
            second.run_ended(job, record(), None)
            await outcomes.wait_for(3)
    finally:
        store.close()
    assert [o.status for o in outcomes.seen] == [
        NotifyStatus.DELIVERED, NotifyStatus.SUPPRESSED, NotifyStatus.DELIVERED]
    assert outcomes.seen[1].error == ("the same event was sent 1m ago, within the cooldown "
                                      "of 30m")
    assert len(script.tries) == 2


def trio_wall_clock() -> datetime:
    """A wall clock that moves with trio's (virtual) clock."""
    return FIRE + timedelta(seconds=trio.current_time())


def _claim(store: SqliteStore, job: str, target: str, kind: str, at: datetime,
           cooldown: float, delivery: str) -> datetime | None:
    return store.claim_notice(job, target, kind, at=at, cooldown=cooldown, delivery=delivery)


async def test_too_many_pending_notifications_are_dropped_and_reported(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    script = Script(hang=True)
    outcomes = Outcomes()
    notifier = Notifier(report=outcomes, send=script, offload=plain_call, max_pending=2)
    async with serving(notifier):
        job = ping_job(tmp_path)
        for _ in range(3):
            notifier.run_ended(job, record(), None)
        (dropped,) = await outcomes.wait_for(1)
        assert notifier.statistics().pending == 2
    assert (dropped.status, dropped.error) == (NotifyStatus.DROPPED,
                                               "2 notifications are already pending")


async def test_one_targets_notifications_go_out_one_at_a_time_in_order(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    sent: list[str] = []

    async def slow(message: Message) -> None:
        await trio.sleep(1 if message.url and message.url.endswith("/start") else 0)
        sent.append(message.url or "")

    job = make_job(tmp_path, """\
        steps: [{id: a, run: "true"}]
        notify: [{ping: "https://hc.example/p"}]
        """)
    notifier = Notifier(send=slow, offload=plain_call)
    async with serving(notifier):
        notifier.run_started(job, record(status=RunStatus.RUNNING))
        notifier.run_ended(job, record(), None)
        await notifier.flush()
    assert sent == ["https://hc.example/p/start", "https://hc.example/p/fail"]


async def test_flush_waits_for_what_is_pending(tmp_path: Path,
                                               autojump_clock: trio.testing.MockClock) -> None:
    script = Script(failures=1)
    notifier = Notifier(send=script, offload=plain_call)
    async with serving(notifier):
        notifier.run_ended(ping_job(tmp_path), record(), None)
        assert notifier.statistics().pending == 1
        await notifier.flush()
        assert notifier.statistics().pending == 0 and len(script.tries) == 2


async def test_saving_happens_after_changes_and_once_more_on_the_way_out(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    snapshots: list[list[str]] = []

    def save(pending: Sequence[Mapping[str, Any]]) -> None:
        snapshots.append([str(p["notice"]["kind"]) for p in pending])

    notifier = Notifier(send=Script(hang=True), save=save, offload=plain_call)
    async with serving(notifier):
        job = ping_job(tmp_path)
        notifier.run_ended(job, record(), None)
        notifier.run_ended(job, record(status=RunStatus.SUCCEEDED), None)
        await trio.sleep(1)
    assert snapshots[0] == ["failure", "success"]
    assert snapshots[-1] == ["failure", "success"]


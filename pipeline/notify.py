"""Notifications: each event of a run, sent to every target of its job that wants it.

CONTRACT §10. A ``Notice`` is one event (start, success, failure, recovery, late, skipped,
retry) of one job; ``Notifier.notify`` turns it into one delivery per target whose ``when:``
names the event, and returns at once: a notification never delays a step or the scheduler,
and never changes a run's status. Deliveries are sent by the notifier's own tasks
(``Notifier.serve``, started in a nursery of its own):

* each try has the target's ``timeout`` (default 10s); a failed try is tried again after a
  backoff, 3 tries in all; every outcome (delivered, failed, suppressed by ``cooldown``,
  dropped because too many are pending) goes to ``report`` and the log;
* deliveries to one target of one job go out in order, one at a time (a ping's ``/start``
  never overtakes its ``/fail``); different targets go out side by side, at most
  ``max_concurrent`` at once, so a hanging endpoint holds up only its own queue;
* what is pending is handed to ``save`` whenever it changes and read back by ``load`` when
  ``serve`` starts, so an undelivered alert survives a restart (the daemon's store backs
  both; a JSON file does for tests and ``JsonFile``);
* a target's strings are templates, rendered when it is sent: ``${{ secrets.HOOK_URL }}`` is
  read then (the job's secrets, and the settings file's), and every secret value is masked
  as ``***`` in what is logged, reported or saved, and in the event itself.

How each kind is sent:

* ``webhook``: a JSON POST of the event (``Notice.payload``; docs/notifications.md);
* ``slack``: a Slack-compatible incoming webhook, ``{"text": ...}``;
* ``email``: through the settings' SMTP server with STARTTLS (``smtplib`` in a thread);
* ``ping``: healthchecks style: ``URL/start`` when a run starts, ``URL`` when it succeeds,
  ``URL/fail`` when it fails or is late, ``URL/log`` for a retry or a skip;
* ``command``: a local program with the event as JSON on stdin, in its own process group,
  ended (SIGTERM, then SIGKILL) when its timeout passes.
"""

from __future__ import annotations

import collections
import json
import math
import os
import smtplib
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from pipeline import expr, process
from pipeline.errors import ExpressionError, NotifyError
from pipeline.model import (
    EMPTY,
    Job,
    NotifyEvent,
    NotifyTarget,
    RunRecord,
    RunStatus,
    Secret,
    Settings,
    TargetKind,
    freeze,
    iso,
    thaw,
    utc_now,
)
from pipeline.notation import short_duration
from pipeline.redact import Redactor

if TYPE_CHECKING:
    import httpx

# httpx (and the CA bundle) are loaded when a notifier first sends, not when this module is
# imported: every run of ``pipeline run`` imports this module, few of them notify anyone.

__all__ = ["JsonFile", "Message", "Notice", "Notifier", "NotifierStatistics", "NotifyStatus",
           "Outcome", "end_events", "send_message"]

RETRY_DELAYS = (2.0, 10.0)  # between the 3 tries
MAX_PENDING = 1000
MAX_CONCURRENT = 16
COMMAND_GRACE = 2.0  # SIGTERM to SIGKILL for a command past its timeout
OUTPUT_TAIL = 2000  # bytes of a failed command's output kept for its error
FAILED = frozenset({RunStatus.FAILED, RunStatus.INTERRUPTED})
PING_SUFFIX = {
    NotifyEvent.START: "/start", NotifyEvent.SUCCESS: "", NotifyEvent.RECOVERY: "",
    NotifyEvent.FAILURE: "/fail", NotifyEvent.LATE: "/fail",
    NotifyEvent.RETRY: "/log", NotifyEvent.SKIPPED: "/log",
}
SLACK_MARK = {
    NotifyEvent.START: ":arrow_forward:", NotifyEvent.SUCCESS: ":white_check_mark:",
    NotifyEvent.FAILURE: ":red_circle:", NotifyEvent.RECOVERY: ":large_green_circle:",
    NotifyEvent.LATE: ":hourglass:", NotifyEvent.SKIPPED: ":fast_forward:",
    NotifyEvent.RETRY: ":repeat:",
}
Offload = Callable[..., Awaitable[Any]]
# ``claim(job, target label, event kind, now, cooldown, delivery id)``: ``Store.claim_notice``.
Claim = Callable[[str, str, str, datetime, float, str], "datetime | None"]


def end_events(status: RunStatus, previous: RunStatus | None) -> tuple[NotifyEvent, ...]:
    """The events of a run that ended in ``status``.

    ``previous`` is how the job's run before it ended (skipped and cancelled runs not
    counted; None: there was none): a success after a failed or interrupted run is also a
    ``recovery``. A cancelled run is an operator's doing and tells nobody.
    """
    if status is RunStatus.SUCCEEDED:
        if previous in FAILED:
            return (NotifyEvent.SUCCESS, NotifyEvent.RECOVERY)
        return (NotifyEvent.SUCCESS,)
    if status in FAILED:
        return (NotifyEvent.FAILURE,)
    if status is RunStatus.SKIPPED:
        return (NotifyEvent.SKIPPED,)
    return ()


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Notice:
    """One event of a job, as every target is told it. Values come from the run's record
    (its params and outputs already masked); secrets are masked again before sending."""

    kind: NotifyEvent
    job: str
    at: datetime  # when it happened
    run_id: str | None = None  # None: a fire that produced no run (late)
    status: str | None = None  # the run's status at the time
    trigger: str | None = None
    fire_time: datetime | None = None
    reason: str | None = None
    outputs: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    step: str | None = None  # retry: the step that failed
    attempt: int | None = None  # retry: the attempt that failed
    deadline: datetime | None = None  # late: the instant that passed

    @classmethod
    def of_run(cls, kind: NotifyEvent, run: RunRecord, *, at: datetime | None = None,
               reason: str | None = None, step: str | None = None, attempt: int | None = None,
               deadline: datetime | None = None) -> Notice:
        """The notice of ``kind`` about ``run`` (as the store records it); ``at`` defaults to
        when it finished, started or was queued, ``reason`` to its own."""
        when = at or run.finished_at or run.started_at or run.queued_at or utc_now()
        return cls(kind, run.job, when, run.id, str(run.status), str(run.trigger),
                   run.fire_time, reason if reason is not None else run.reason,
                   run.outputs, run.params, step, attempt, deadline)

    def headline(self) -> str:
        """One line a person reads: what happened to which run."""
        run = f"run {self.run_id}" if self.run_id else "a run"
        because = f": {self.reason}" if self.reason else ""
        fire = iso(self.fire_time) or "?"
        if self.kind is NotifyEvent.START:
            return f"{self.job}: {run} started ({self.trigger or 'manual'})"
        if self.kind is NotifyEvent.SUCCESS:
            return f"{self.job}: {run} succeeded"
        if self.kind is NotifyEvent.RECOVERY:
            return f"{self.job}: recovered, {run} succeeded after failing"
        if self.kind is NotifyEvent.FAILURE:
            ended = "failed" if self.status in (None, "failed") else f"ended {self.status}"
            return f"{self.job}: {run} {ended}{because}"
        if self.kind is NotifyEvent.LATE:
            return (f"{self.job}: the fire of {fire} is late: no run succeeded by "
                    f"{iso(self.deadline) or '?'}{because}")
        if self.kind is NotifyEvent.SKIPPED:
            return f"{self.job}: the fire of {fire} was skipped{because}"
        return (f"{self.job}: step {self.step} of {run} failed (attempt {self.attempt}), "
                f"trying again{because}")

    def link(self, base_url: str | None) -> str | None:
        """The run's page, when the status page's address is known."""
        if not base_url or not self.run_id:
            return None
        return f"{base_url.rstrip('/')}/runs/{self.run_id}"

    def payload(self, base_url: str | None = None) -> dict[str, Any]:
        """The event as JSON: a webhook's body and a command's stdin (docs/notifications.md)."""
        return {
            "version": 1, "event": str(self.kind), "job": self.job, "run_id": self.run_id,
            "status": self.status, "trigger": self.trigger, "fire_time": iso(self.fire_time),
            "at": iso(self.at), "reason": self.reason, "outputs": thaw(self.outputs),
            "step": self.step, "attempt": self.attempt, "deadline": iso(self.deadline),
            "url": self.link(base_url), "text": self.headline(),
        }

    def as_dict(self) -> dict[str, Any]:
        """What ``save`` stores of it (``from_dict`` reads it back)."""
        return {**{k: v for k, v in self.payload().items()
                   if k not in ("version", "url", "text", "event")},
                "kind": str(self.kind), "params": thaw(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notice:
        return cls(NotifyEvent(data["kind"]), str(data["job"]), _time(data["at"]) or utc_now(),
                   data.get("run_id"), data.get("status"), data.get("trigger"),
                   _time(data.get("fire_time")), data.get("reason"),
                   freeze(data.get("outputs") or {}), freeze(data.get("params") or {}),
                   data.get("step"), data.get("attempt"), _time(data.get("deadline")))


class NotifyStatus(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"  # every try failed, or it cannot be sent at all (a missing secret)
    SUPPRESSED = "suppressed"  # the same event went to this target within its cooldown
    DROPPED = "dropped"  # too many notifications were pending


@dataclass(frozen=True)
class Outcome:
    """What became of one notification: for the run's record (``notifications``) and the
    decision log (``notified`` / ``notify failed``). ``error`` has secrets masked."""

    job: str
    run_id: str | None
    fire_time: datetime | None
    target: str  # NotifyTarget.label: "notify[0] webhook"
    event: NotifyEvent
    status: NotifyStatus
    at: datetime
    tries: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As the API shows it with the run (CONTRACT §5: target, event, status, at, error)."""
        return {"target": self.target, "event": str(self.event), "status": str(self.status),
                "at": iso(self.at), "error": self.error, "tries": self.tries}


@dataclass(frozen=True)
class NotifierStatistics:
    pending: int
    delivered: int
    failed: int
    suppressed: int
    dropped: int


@dataclass(frozen=True)
class Message:
    """A notification rendered for its target: what goes to the endpoint, secrets in it.

    Never logged or stored as it is; ``Notifier`` masks what it says about one.
    """

    kind: TargetKind
    timeout: float
    url: str | None = None  # webhook, slack, ping
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    body: bytes = b""  # the HTTP body, or a command's stdin
    content_type: str = "application/json"
    to: tuple[str, ...] = ()  # email
    subject: str = ""
    text: str = ""  # email body
    argv: tuple[str, ...] = ()  # command
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # command: added to environ


# -- delivering one message ---------------------------------------------------------------


async def send_message(message: Message, *, client: httpx.AsyncClient,
                       settings: Settings | None, environ: Mapping[str, str],
                       tls: ssl.SSLContext) -> None:
    """Send ``message`` once; raise ``NotifyError`` saying why it failed. The caller bounds
    the time (a cancel scope)."""
    if message.kind is TargetKind.EMAIL:
        await _send_email(message, settings, environ, tls)
    elif message.kind is TargetKind.COMMAND:
        await _run_command(message, environ)
    else:
        await _post(message, client)


async def _post(message: Message, client: httpx.AsyncClient) -> None:
    import httpx

    from pipeline.runners.http import describe_error

    assert message.url is not None
    try:
        response = await client.post(message.url, content=message.body, headers={
            "Content-Type": message.content_type, "User-Agent": "pipeline",
            **message.headers})
    except httpx.InvalidURL as exc:
        raise NotifyError(f"invalid URL: {exc}") from None
    except httpx.HTTPError as exc:
        raise NotifyError(describe_error(exc)) from None
    if not 200 <= response.status_code < 300:
        phrase = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
        raise NotifyError(f"answered {response.status_code} {phrase}".rstrip())


def _read_secret(secret: Secret, environ: Mapping[str, str]) -> str:
    if secret.env is not None:
        if secret.env not in environ:
            raise NotifyError(f"{secret.name}: environment variable {secret.env} is not set")
        return environ[secret.env]
    assert secret.file is not None
    try:
        return Path(secret.file).read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotifyError(f"{secret.name}: cannot read {secret.file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


async def _send_email(message: Message, settings: Settings | None,
                      environ: Mapping[str, str], tls: ssl.SSLContext) -> None:
    smtp = settings.smtp if settings is not None else None
    if smtp is None:
        raise NotifyError("no SMTP server: set smtp: in the settings file")
    password = _read_secret(smtp.password, environ) if smtp.password is not None else None
    mail = EmailMessage()
    mail["From"] = smtp.sender
    mail["To"] = ", ".join(message.to)
    mail["Subject"] = message.subject
    mail["Date"] = formatdate(localtime=True)
    mail["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2] or None)
    mail.set_content(message.text)

    def send() -> None:
        # smtplib's own timeout bounds every socket operation, so the thread ends even when
        # the caller stopped waiting for it.
        with smtplib.SMTP(smtp.host, smtp.port, timeout=message.timeout) as client:
            client.ehlo()
            if smtp.starttls:
                if not client.has_extn("starttls"):
                    raise NotifyError(f"{smtp.host}:{smtp.port} does not offer STARTTLS; "
                                      "nothing was sent (starttls: false allows plain SMTP)")
                client.starttls(context=tls)
                client.ehlo()
            if smtp.username is not None:
                client.login(smtp.username, password or "")
            client.send_message(mail)

    try:
        await trio.to_thread.run_sync(send, abandon_on_cancel=True)
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        raise NotifyError(f"SMTP {smtp.host}:{smtp.port} answered {exc.smtp_code} "
                          f"{text}") from None
    except (smtplib.SMTPException, OSError) as exc:
        reason = (f"TLS: {exc.reason or exc}" if isinstance(exc, ssl.SSLError)
                  else getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        raise NotifyError(f"SMTP {smtp.host}:{smtp.port}: {reason}") from None


async def _run_command(message: Message, environ: Mapping[str, str]) -> None:
    # stdin and the output are anonymous files, not pipes: the event is there whether or not
    # the program reads it, and nothing it leaves running can hold a pipe open on us.
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as output:
        stdin.write(message.body)
        stdin.seek(0)
        try:
            proc = await trio.lowlevel.open_process(
                list(message.argv), stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True, env={**environ, **message.env})
        except (OSError, ValueError) as exc:
            raise NotifyError(process.start_failure(exc, message.argv[0], None)) from None
        try:
            await proc.wait()
        finally:
            # Its group goes with it, on a timeout too (this task is cancelled then).
            with trio.CancelScope(shield=True):
                await process.end_group(proc.pid, grace=COMMAND_GRACE, leader=proc)
        assert proc.returncode is not None
        ended = process.Exit.from_returncode(proc.returncode)
        if not ended.ok:
            output.seek(max(output.seek(0, os.SEEK_END) - OUTPUT_TAIL, 0))
            said = output.read().decode("utf-8", "replace").strip().splitlines()
            raise NotifyError(f"{message.argv[0]} ended with {ended.describe()}"
                              + (f": {said[-1]}" if said else ""))


# -- rendering -------------------------------------------------------------------------------


def _templates(target: NotifyTarget) -> list[str]:
    return [t for t in (target.url, target.subject, *target.headers.values(), *target.to,
                        *target.command) if t]


def _render(target: NotifyTarget, notice: Notice, context: Mapping[str, Any],
            base_url: str | None, redactor: Redactor) -> Message:
    """The message for ``target``; ExpressionError if a template cannot be rendered."""

    def text(value: str) -> str:
        return expr.render(value, context)

    payload = redactor.value(notice.payload(base_url))
    headline = str(payload["text"])
    if target.kind is TargetKind.WEBHOOK:
        return Message(target.kind, target.timeout, url=text(target.url or ""),
                       headers={k: text(v) for k, v in target.headers.items()},
                       body=json.dumps(payload).encode())
    if target.kind is TargetKind.SLACK:
        link = payload["url"]
        shown = _slack_escape(headline) + (f" (<{link}|{notice.run_id}>)" if link else "")
        body: dict[str, Any] = {"text": f"{SLACK_MARK[notice.kind]} {shown}"}
        if target.channel:
            body["channel"] = text(target.channel)
        if target.username:
            body["username"] = text(target.username)
        return Message(target.kind, target.timeout, url=text(target.url or ""),
                       body=json.dumps(body).encode())
    if target.kind is TargetKind.PING:
        import httpx

        url = httpx.URL(text(target.url or ""))
        url = url.copy_with(path=url.path.rstrip("/") + PING_SUFFIX[notice.kind]
                            if PING_SUFFIX[notice.kind] else url.path)
        return Message(target.kind, target.timeout, url=str(url),
                       body=headline.encode(), content_type="text/plain; charset=utf-8")
    if target.kind is TargetKind.EMAIL:
        subject = (text(target.subject) if target.subject
                   else f"[pipeline] {notice.job}: {notice.kind}")
        lines = [headline, ""]
        for key in ("job", "event", "run_id", "status", "trigger", "fire_time", "at",
                    "deadline", "step", "attempt", "reason", "url"):
            if payload.get(key) is not None:
                lines.append(f"{key}: {payload[key]}")
        if payload["outputs"]:
            lines += ["", "outputs:", *(f"  {k}: {v}" for k, v in payload["outputs"].items())]
        return Message(target.kind, target.timeout, to=tuple(text(t) for t in target.to),
                       subject=redactor.text(subject), text="\n".join(lines) + "\n")
    return Message(target.kind, target.timeout, argv=tuple(text(a) for a in target.command),
                   body=json.dumps(payload).encode(),
                   env={"PIPELINE_JOB": notice.job, "PIPELINE_RUN_ID": notice.run_id or "",
                        "PIPELINE_NOTIFY_EVENT": str(notice.kind)})


def _slack_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- pending deliveries ------------------------------------------------------------------------


def _target_dict(target: NotifyTarget) -> dict[str, Any]:
    return {"kind": str(target.kind), "when": sorted(map(str, target.when)),
            "index": target.index, "url": target.url, "headers": dict(target.headers),
            "to": list(target.to), "subject": target.subject, "channel": target.channel,
            "username": target.username, "command": list(target.command),
            "cooldown": target.cooldown, "timeout": target.timeout}


def _target_from(data: Mapping[str, Any]) -> NotifyTarget:
    return NotifyTarget(
        kind=TargetKind(data["kind"]), when=frozenset(NotifyEvent(e) for e in data["when"]),
        index=int(data["index"]), url=data.get("url"),
        headers=freeze(dict(data.get("headers") or {})), to=tuple(data.get("to") or ()),
        subject=data.get("subject"), channel=data.get("channel"),
        username=data.get("username"), command=tuple(data.get("command") or ()),
        cooldown=float(data.get("cooldown", 0)), timeout=float(data["timeout"]))


@dataclass
class _Delivery:
    """One notice on its way to one target. ``secrets`` are references (where each value is
    read), never values: this is what ``save`` stores."""

    id: str
    notice: Notice
    target: NotifyTarget
    secrets: Mapping[str, Secret]
    tries: int = 0  # tries that failed so far

    @property
    def lane(self) -> tuple[str, str]:
        return (self.notice.job, self.target.label)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "notice": self.notice.as_dict(),
                "target": _target_dict(self.target), "tries": self.tries,
                "secrets": {name: {"env": s.env, "file": s.file}
                            for name, s in self.secrets.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Delivery:
        return cls(str(data["id"]), Notice.from_dict(data["notice"]),
                   _target_from(data["target"]),
                   {name: Secret(name, ref.get("env"), ref.get("file"))
                    for name, ref in (data.get("secrets") or {}).items()},
                   int(data.get("tries", 0)))


@dataclass(frozen=True)
class JsonFile:
    """``save`` and ``load`` for a ``Notifier`` on one JSON file, replaced atomically."""

    path: Path

    def save(self, pending: Sequence[Mapping[str, Any]]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(list(pending), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def load(self) -> list[dict[str, Any]]:
        try:
            found = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return found if isinstance(found, list) else []


# -- the notifier ------------------------------------------------------------------------------


class Notifier:
    """Sends notices to their targets without ever making the caller wait.

    Construct it with plain values and functions, start ``serve`` in a nursery of its own
    (``await nursery.start(notifier.serve)``), then call ``notify`` (or ``run_started``,
    ``run_ended``, ...) from any task of that trio run.

    ``report``: told every ``Outcome`` (an async function; the daemon records it with the run
    and as a decision). ``save(pending)``: stores the list of pending deliveries (plain JSON
    data, replacing what it stored before); ``load()``: returns what was last saved. Both are
    blocking functions, called through ``offload`` (a worker thread). ``settings``: the SMTP
    server and the settings' secrets (an attribute: set it again when the file changes).
    ``base_url``: the status page, for links to runs. ``environ``: where ``{env: NAME}``
    secrets are read, and a command's environment. ``tls``: what HTTPS and SMTP's STARTTLS
    verify servers with (default: the system's CAs). ``send``: how a rendered ``Message`` is
    sent (default ``send_message``; tests pass a plain function). ``claim``: where a
    target's ``cooldown`` is kept beyond this process (``Store.claim_notice``, blocking,
    called through ``offload`` before a delivery with a cooldown is first tried), so that it
    holds across restarts and across a cluster's nodes; without it, it holds in memory.
    ``max_concurrent``: tries under way at once, all targets together; ``max_pending``:
    deliveries kept before new ones are dropped.
    """

    def __init__(self, *, report: Callable[[Outcome], Awaitable[object]] | None = None,
                 save: Callable[[list[dict[str, Any]]], object] | None = None,
                 load: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
                 settings: Settings | None = None, base_url: str | None = None,
                 environ: Mapping[str, str] = os.environ, tls: ssl.SSLContext | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS, max_pending: int = MAX_PENDING,
                 max_concurrent: int = MAX_CONCURRENT,
                 send: Callable[[Message], Awaitable[object]] | None = None,
                 offload: Offload = trio.to_thread.run_sync,
                 clock: Callable[[], datetime] = utc_now,
                 claim: Claim | None = None) -> None:
        self.report = report
        self.settings = settings
        self.base_url = base_url
        self.environ = environ
        self._tls = tls
        self.retry_delays = tuple(retry_delays)
        self.max_pending = max_pending
        self.clock = clock
        self._save = save
        self._load = load
        self._send = send
        self._claim = claim
        self._offload = offload
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._pending: dict[str, _Delivery] = {}  # by id, in order of arrival
        self._lanes: dict[tuple[str, str], collections.deque[str]] = {}
        self._running: set[tuple[str, str]] = set()  # lanes with a task sending
        self._last: dict[tuple[str, str, NotifyEvent], float] = {}  # cooldown: trio time
        self._counts: collections.Counter[NotifyStatus] = collections.Counter()
        self._outcomes_in, self._outcomes = trio.open_memory_channel[Outcome](math.inf)
        self._dirty = trio.Event()
        self._changed = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            from pipeline.runners.http import ssl_context

            self._tls = ssl_context(None)
        return self._tls

    @property
    def tries(self) -> int:
        return len(self.retry_delays) + 1

    def statistics(self) -> NotifierStatistics:
        return NotifierStatistics(len(self._pending), self._counts[NotifyStatus.DELIVERED],
                                  self._counts[NotifyStatus.FAILED],
                                  self._counts[NotifyStatus.SUPPRESSED],
                                  self._counts[NotifyStatus.DROPPED])

    # -- what callers call --------------------------------------------------------------

    def notify(self, job: Job, notice: Notice) -> None:
        """Queue ``notice`` for each of ``job.notify``'s targets that wants its kind; never
        blocks, never raises for a target. A repeat within a target's ``cooldown`` (same
        job, target and kind) is suppressed; past ``max_pending`` pending deliveries, new
        ones are dropped. Both are reported."""
        shared = self.settings.secrets if self.settings is not None else EMPTY
        secrets = {**shared, **job.secrets}
        now = trio.current_time()
        for target in job.notify:
            if notice.kind not in target.when:
                continue
            key = (job.name, target.label, notice.kind)
            last = self._last.get(key)
            if target.cooldown > 0 and last is not None and now - last < target.cooldown:
                self._outcome(notice, target, NotifyStatus.SUPPRESSED, 0,
                              "the same event was sent "
                              f"{short_duration(round(now - last, 3))} ago, "
                              f"within the cooldown of {short_duration(target.cooldown)}")
                continue
            if len(self._pending) >= self.max_pending:
                self._outcome(notice, target, NotifyStatus.DROPPED, 0,
                              f"{len(self._pending)} notifications are already pending")
                continue
            self._last[key] = now
            self._add(_Delivery(uuid.uuid4().hex, notice, target, secrets))

    def run_started(self, job: Job, run: RunRecord) -> None:
        self.notify(job, Notice.of_run(NotifyEvent.START, run, at=run.started_at))

    def run_ended(self, job: Job, run: RunRecord, previous: RunStatus | None) -> None:
        """The events of a finished (or skipped) run; ``previous`` as ``end_events`` says."""
        for kind in end_events(run.status, previous):
            self.notify(job, Notice.of_run(kind, run))

    def step_retrying(self, job: Job, run: RunRecord, step: str, attempt: int,
                      error: str | None) -> None:
        self.notify(job, Notice.of_run(NotifyEvent.RETRY, run, at=self.clock(), reason=error,
                                       step=step, attempt=attempt))

    def deadline_missed(self, job: Job, fire_time: datetime, deadline: datetime,
                        run: RunRecord | None = None) -> None:
        """A fire's run had not succeeded by ``deadline`` (``run``: None if it has none)."""
        if run is None:
            notice = Notice(NotifyEvent.LATE, job.name, self.clock(), fire_time=fire_time,
                            deadline=deadline, reason="the fire produced no run")
        else:
            notice = Notice.of_run(NotifyEvent.LATE, run, at=self.clock(), deadline=deadline,
                                   reason=f"the run is {run.status}")
        self.notify(job, notice)

    async def flush(self) -> None:
        """Wait until nothing is pending (delivered, or given up on). Bound it with a cancel
        scope: before shutting down, give pending alerts a few seconds to go out."""
        while self._pending:
            await self._changed.park()

    # -- running ------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Send what is pending (what ``load`` gives back first) until cancelled; on the way
        out, save what is still pending."""
        import httpx

        if self._load is not None:
            self._restore(await self._offload(self._load))
        try:
            async with httpx.AsyncClient(verify=self.tls, timeout=None, trust_env=False,
                                         follow_redirects=False) as client, \
                    trio.open_nursery() as nursery:
                self._client = client
                self._nursery = nursery
                nursery.start_soon(self._report_outcomes)
                nursery.start_soon(self._keep_saved)
                for lane in list(self._lanes):
                    self._start(lane)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._client = None

    def _restore(self, saved: Sequence[Mapping[str, Any]]) -> None:
        for entry in saved:
            try:
                delivery = _Delivery.from_dict(entry)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                logger.warning("a saved notification cannot be read and is dropped: {}", exc)
                continue
            if delivery.id not in self._pending:
                self._add(delivery)
        if saved:
            logger.info("{} notification(s) pending from before the restart", len(saved))

    def _add(self, delivery: _Delivery) -> None:
        self._pending[delivery.id] = delivery
        self._lanes.setdefault(delivery.lane, collections.deque()).append(delivery.id)
        self._dirty.set()
        if self._nursery is not None:
            self._start(delivery.lane)

    def _start(self, lane: tuple[str, str]) -> None:
        if lane not in self._running:
            assert self._nursery is not None
            self._running.add(lane)
            self._nursery.start_soon(self._drive, lane)

    async def _drive(self, lane: tuple[str, str]) -> None:
        """Deliver one lane's notices in order, until it is empty."""
        queue = self._lanes[lane]
        try:
            while queue:
                await self._deliver(self._pending[queue[0]])
                queue.popleft()
            del self._lanes[lane]
        finally:
            self._running.discard(lane)

    async def _deliver(self, delivery: _Delivery) -> None:
        notice, target = delivery.notice, delivery.target
        if target.cooldown > 0 and self._claim is not None and not await self._claimed(delivery):
            return
        try:
            message, redactor = self._message(delivery)
        except (NotifyError, ExpressionError) as exc:
            self._done(delivery, NotifyStatus.FAILED, f"cannot be sent: {exc}")
            return
        while True:
            try:
                async with self._limiter:
                    with trio.fail_after(target.timeout):
                        if self._send is not None:
                            await self._send(message)
                        else:
                            assert self._client is not None
                            await send_message(message, client=self._client,
                                               settings=self.settings, environ=self.environ,
                                               tls=self.tls)
            except trio.TooSlowError:
                error = f"timed out after {short_duration(target.timeout)}"
            except Exception as exc:  # any failure of one try is that try's: retried
                error = str(exc) or type(exc).__name__
            else:
                self._done(delivery, NotifyStatus.DELIVERED, None)
                return
            delivery.tries += 1
            self._dirty.set()
            error = redactor.text(error)
            if delivery.tries >= self.tries:
                self._done(delivery, NotifyStatus.FAILED, error)
                return
            delay = self.retry_delays[delivery.tries - 1]
            logger.warning("{}: {} of {} {} failed (try {} of {}), again in {}: {}",
                           notice.job, target.label, notice.kind, notice.run_id or "",
                           delivery.tries, self.tries, short_duration(delay), error)
            await trio.sleep(delay)

    async def _claimed(self, delivery: _Delivery) -> bool:
        """Whether ``delivery`` may be sent as far as the shared cooldown goes; if not, it
        is done (suppressed). A store that cannot answer lets it go: a repeated alert is
        better than a lost one."""
        notice, target = delivery.notice, delivery.target
        assert self._claim is not None
        now = self.clock()
        try:
            last = await self._offload(self._claim, notice.job, target.label, str(notice.kind),
                                       now, target.cooldown, delivery.id)
        except Exception as exc:  # the store is down: send, and say why the cooldown lapsed
            logger.warning("{}: {} of {}: the cooldown cannot be checked, sent anyway: {}",
                           notice.job, target.label, notice.kind, exc)
            return True
        if last is None:
            return True
        ago = max(0.0, round((now - last).total_seconds(), 3))
        self._done(delivery, NotifyStatus.SUPPRESSED,
                   f"the same event was sent {short_duration(ago)} ago, within the cooldown "
                   f"of {short_duration(target.cooldown)}")
        return False

    def _message(self, delivery: _Delivery) -> tuple[Message, Redactor]:
        """Render the delivery's target, reading the secrets it uses now."""
        notice, target = delivery.notice, delivery.target
        wanted = {ref.path[1] for template in _templates(target)
                  for ref in expr.references(template)
                  if ref.path[0] == "secrets" and len(ref.path) > 1}
        values: dict[str, str] = {}
        for name, secret in delivery.secrets.items():
            try:
                values[name] = _read_secret(secret, self.environ)
            except NotifyError:
                if name in wanted:
                    raise
        missing = sorted(str(name) for name in wanted if name not in delivery.secrets)
        if missing:
            raise NotifyError(f"no secret {missing[0]} is declared (by the job or the "
                              "settings file)")
        redactor = Redactor(values.values())
        context = {
            "secrets": values, "params": thaw(notice.params), "job": {"name": notice.job},
            "run": {"id": notice.run_id, "fire_time": iso(notice.fire_time),
                    "trigger": notice.trigger, "status": notice.status, "event": None,
                    "upstream": None},
        }
        return _render(target, notice, context, self.base_url, redactor), redactor

    def _done(self, delivery: _Delivery, status: NotifyStatus, error: str | None) -> None:
        del self._pending[delivery.id]
        self._dirty.set()
        self._changed.unpark_all()
        self._outcome(delivery.notice, delivery.target, status,
                      delivery.tries + (status is NotifyStatus.DELIVERED), error)

    def _outcome(self, notice: Notice, target: NotifyTarget, status: NotifyStatus, tries: int,
                 error: str | None) -> None:
        self._counts[status] += 1
        outcome = Outcome(notice.job, notice.run_id, notice.fire_time, target.label,
                          notice.kind, status, self.clock(), tries, error)
        run = f" of run {notice.run_id}" if notice.run_id else ""
        if status is NotifyStatus.DELIVERED:
            logger.info("{}: {} told of {}{}", notice.job, target.label, notice.kind, run)
        elif status is NotifyStatus.SUPPRESSED:
            logger.info("{}: {} not told of {}{}: {}", notice.job, target.label, notice.kind,
                        run, error)
        else:
            logger.error("{}: {} could not be told of {}{} ({}): {}", notice.job,
                         target.label, notice.kind, run, status, error)
        self._outcomes_in.send_nowait(outcome)

    async def _report_outcomes(self) -> None:
        async for outcome in self._outcomes:
            if self.report is None:
                continue
            try:
                await self.report(outcome)
            except Exception:
                logger.exception("recording a notification's outcome failed")

    async def _keep_saved(self) -> None:
        """Hand the pending deliveries to ``save`` after every change (changes that come
        while one is being saved are saved together next)."""
        if self._save is None:
            return
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await self._save_now()
        finally:
            if self._dirty.is_set():
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._save_now()

    async def _save_now(self) -> None:
        assert self._save is not None
        snapshot = [d.as_dict() for d in self._pending.values()]
        try:
            await self._offload(self._save, snapshot)
        except Exception as exc:
            logger.error("cannot save the pending notifications (trying again): {}", exc)
            self._dirty.set()
            await trio.sleep(1.0)


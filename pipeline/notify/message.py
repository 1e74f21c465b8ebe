"""A notice rendered for one target (``Message``): its templates filled in with the secrets
they use, read when it is sent, and the notice's own words in the shape each kind takes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import expr
from pipeline.errors import NotifyError
from pipeline.model import EMPTY, NotifyEvent, NotifyTarget, Secret, TargetKind, iso, thaw
from pipeline.notify.notice import Notice
from pipeline.redact import Redactor

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


def read_secret(secret: Secret, environ: Mapping[str, str]) -> str:
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


def render_message(notice: Notice, target: NotifyTarget, secrets: Mapping[str, Secret], *,
                   environ: Mapping[str, str], base_url: str | None,
                   ) -> tuple[Message, Redactor]:
    """The message of ``notice`` for ``target``, reading the ``secrets`` it uses now, and the
    redactor that masks their values. Raises NotifyError (a secret missing or unreadable),
    ExpressionError (a template that cannot be rendered)."""
    wanted = {ref.path[1] for template in _templates(target)
              for ref in expr.references(template)
              if ref.path[0] == "secrets" and len(ref.path) > 1}
    values: dict[str, str] = {}
    for name, secret in secrets.items():
        try:
            values[name] = read_secret(secret, environ)
        except NotifyError:
            if name in wanted:
                raise
    missing = sorted(str(name) for name in wanted if name not in secrets)
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
    return _render(target, notice, context, base_url, redactor), redactor


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


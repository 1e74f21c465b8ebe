"""Sending one rendered message, once, the way its kind is sent: an HTTP POST (webhook, Slack,
ping), an email through the settings' SMTP server, or a local command."""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

import trio

from pipeline import process
from pipeline.errors import NotifyError
from pipeline.model import Settings, TargetKind
from pipeline.notify.message import Message, read_secret

if TYPE_CHECKING:
    import httpx

# httpx (and the CA bundle) are loaded when a notifier first sends, not when this module is
# imported: every run of ``pipeline run`` imports it, few of them notify anyone.

COMMAND_GRACE = 2.0  # SIGTERM to SIGKILL for a command past its timeout
OUTPUT_TAIL = 2000  # bytes of a failed command's output kept for its error


async def send_message(message: Message, *, client: Callable[[], httpx.AsyncClient],
                       settings: Settings | None, environ: Mapping[str, str],
                       tls: Callable[[], ssl.SSLContext]) -> None:
    """Send ``message`` once; raise ``NotifyError`` saying why it failed. The caller bounds
    the time (a cancel scope). ``client`` and ``tls`` are asked for only by the kinds that
    use them (HTTP; email's STARTTLS)."""
    if message.kind is TargetKind.EMAIL:
        await _send_email(message, settings, environ, tls())
    elif message.kind is TargetKind.COMMAND:
        await _run_command(message, environ)
    else:
        await _post(message, client())


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


async def _send_email(message: Message, settings: Settings | None,
                      environ: Mapping[str, str], tls: ssl.SSLContext) -> None:
    smtp = settings.smtp if settings is not None else None
    if smtp is None:
        raise NotifyError("no SMTP server: set smtp: in the settings file")
    password = read_secret(smtp.password, environ) if smtp.password is not None else None
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


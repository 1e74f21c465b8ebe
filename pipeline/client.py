"""Talking to a running daemon over its HTTP API: what ``pipeline trigger`` and ``stop`` use.

The daemon's address comes from ``--server URL`` or else from ``STATE_DIR/daemon.json``, which
a live daemon writes with the address it really bound. Every failure is a ``PipelineError``
whose message says what to do: ``DaemonUnreachable`` (nothing answers, or no daemon runs on the
state directory), ``NotFound`` (unknown job or run), ``ParamError`` (parameters refused) and
``PipelineError`` for a refusal (a token missing, a run not started by the overlap policy).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from pipeline.errors import DaemonUnreachable, NotFound, ParamError, PipelineError

TIMEOUT = 10.0
WAIT_STEP = 30.0  # seconds of one long poll while waiting for a run to end


class Refused(PipelineError):
    """The daemon understood the request and said no (a conflict, a token); exit status 1."""

    def __init__(self, message: str, status: int, answer: Mapping[str, Any] | None = None,
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.answer = dict(answer or {})


def _reachable(url: str) -> str:
    """A daemon bound to every interface is reached on loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("0.0.0.0", "::", ""):
        local = "127.0.0.1" if host != "::" else "[::1]"
        netloc = f"{local}:{parts.port}" if parts.port else local
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts).rstrip("/")


def server_url(state_dir: Path, server: str | None = None) -> str:
    """The daemon's base URL: ``server`` if given, else what the live daemon recorded.

    Raises ``DaemonUnreachable`` when no daemon runs on ``state_dir`` or it serves no HTTP.
    """
    if server:
        if "://" not in server:
            server = f"http://{server}"
        return _reachable(server)
    from pipeline.daemon import read_daemon_file  # the daemon's modules only when needed

    info = read_daemon_file(state_dir)
    if info is None:
        raise DaemonUnreachable(f"no daemon is running on the state directory {state_dir}: "
                                "start one with `pipeline serve`, or give --server URL")
    listen = info.get("listen")
    if not listen:
        raise DaemonUnreachable(f"the daemon on {state_dir} (pid {info.get('pid')}) serves no "
                                "HTTP (--no-http); restart it without --no-http")
    return _reachable(str(listen) if "://" in str(listen) else f"http://{listen}")


class Client:
    """A few calls on one daemon; ``base`` is its URL, ``token`` its bearer token if any."""

    def __init__(self, base: str, token: str | None = None, *,
                 transport: httpx.BaseTransport | None = None,
                 timeout: float = TIMEOUT) -> None:
        headers = {"Accept": "application/json", "User-Agent": "pipeline-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base = base.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout,
                                 transport=transport, trust_env=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: Mapping[str, Any] | None = None, timeout: float | None = None,
                ) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=json, params=params,
                                         timeout=timeout or self.http.timeout)
        except httpx.TransportError as exc:
            raise DaemonUnreachable(f"no daemon answers at {self.base}: {_reason(exc)}") \
                from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise PipelineError(f"{self.base} answered {response.status_code} with something "
                                "that is not the pipeline API; is --server right?")
        if response.is_success:
            return answer
        error = answer.get("error")
        message = str((error.get("message") if isinstance(error, dict) else None)
                      or response.reason_phrase)
        status = response.status_code
        if status == 404:
            raise NotFound(message)
        if status == 422:
            raise ParamError(message)
        if status == 401:
            raise Refused(f"{message} (give --token-file or set PIPELINE_TOKEN)", status,
                          answer)
        if status >= 500:
            raise PipelineError(f"the daemon failed: {message}")
        raise Refused(message, status, answer)

    def trigger(self, job: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start ``job`` now; the answer holds ``run_id`` and ``status`` (running or queued).

        Raises ``Refused`` (409) when the overlap policy recorded the run as skipped.
        """
        return self.request("POST", f"/api/v1/jobs/{quote(job, safe='')}/runs",
                            json={"params": dict(params or {})})

    def run(self, run_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """One run with its steps; with ``wait``, the daemon answers once it has ended or
        after ``wait`` seconds."""
        params = {"wait": f"{wait:g}"} if wait else None
        return self.request("GET", f"/api/v1/runs/{quote(run_id, safe='')}", params=params,
                            timeout=wait + TIMEOUT)

    def wait(self, run_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run has ended (or ``timeout`` seconds); return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_STEP if deadline is None else min(WAIT_STEP,
                                                          deadline - time.monotonic())
            run = self.run(run_id, wait=max(left, 0.0))
            if run.get("status") not in ("queued", "running") or left <= 0:
                return run

    def stop(self, run_id: str) -> dict[str, Any]:
        """Ask the daemon to cancel the run. ``Refused`` (409) if it is not running."""
        return self.request("POST", f"/api/v1/runs/{quote(run_id, safe='')}/stop")


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (is `pipeline serve` running?)"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def trigger(server: str, token: str | None, job: str, params: Mapping[str, Any] | None = None,
            *, wait: bool = False) -> dict[str, Any]:
    """Trigger ``job`` on the daemon at ``server``; return the run as the API shows it.

    Without ``wait`` the answer is the trigger's (``run_id``, ``status``); with it, the run once
    it has ended (``id``, ``status``, ``steps``...).
    """
    with Client(server, token) as client:
        started = client.trigger(job, params)
        if not wait:
            return started
        return client.wait(str(started["run_id"]))


def stop(server: str, token: str | None, run_id: str) -> dict[str, Any]:
    """Ask the daemon at ``server`` to cancel ``run_id``."""
    with Client(server, token) as client:
        return client.stop(run_id)

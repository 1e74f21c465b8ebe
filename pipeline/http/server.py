"""Serving the app: hypercorn's trio worker, started with ``nursery.start``."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from loguru import logger

from pipeline.errors import PipelineError
from pipeline.http.app import create_app
from pipeline.http.guard import check_listen, parse_listen

if TYPE_CHECKING:
    from pipeline.daemon import Daemon


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger.opt(exception=record.exc_info).log(record.levelname, "http: {}",
                                                  record.getMessage())


def _hypercorn_log() -> logging.Logger:
    log = logging.getLogger("pipeline.http.server")
    if not log.handlers:
        log.addHandler(_ToLoguru())
        log.propagate = False
        log.setLevel(logging.WARNING)  # its "Running on" line: we say it ourselves
    return log


def _first_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_os_error(inner)
            if found is not None:
                return found
    return None


async def serve_http(daemon: Daemon, *, listen: str, token: str | None = None,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API and the status page on ``listen`` until cancelled.

    ``task_status.started`` gets the bound address as a URL (``http://127.0.0.1:PORT``, with
    the real port when port 0 was asked). Raises ``ListenRefused`` for an address
    ``check_listen`` refuses and ``PipelineError`` when the address cannot be bound.
    """
    check_listen(listen, token)
    host, port = parse_listen(listen)
    await trio.to_thread.run_sync(_probe, host, port, listen)
    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = _hypercorn_log()
    config.include_server_header = False
    config.graceful_timeout = 2.0
    app = cast(Any, create_app(daemon, token=token))
    bound = _Bound(task_status, token)
    try:
        await hypercorn_serve(app, config, mode="asgi", task_status=bound)
    except (OSError, ExceptionGroup) as exc:  # hypercorn's nurseries wrap its bind error
        error = None if bound.url else _first_os_error(exc)
        if error is None:
            raise
        raise PipelineError(f"cannot listen on {listen}: {error.strerror or error}") from None


def _probe(host: str, port: int, listen: str) -> None:
    """Bind once ourselves first: a clear error for a taken or foreign address (hypercorn's
    own failed socket would be left open)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise PipelineError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


class _Bound(trio.TaskStatus[list[str]]):
    """Hands the first bound URL on, as ``serve_http``'s own start value."""

    def __init__(self, outer: trio.TaskStatus[str], token: str | None) -> None:
        self.outer = outer
        self.token = token
        self.url: str | None = None

    def started(self, value: list[str] | None = None) -> None:
        assert value, "hypercorn bound no address"
        self.url = value[0]
        logger.info("status page and API on {}/{}", self.url,
                    "" if self.token else " (no token: loopback only)")
        self.outer.started(self.url)



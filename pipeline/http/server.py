"""Serving the app: hypercorn's trio worker, started with ``nursery.start``."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from loguru import logger

from pipeline import page
from pipeline.errors import PipelineError
from pipeline.http.app import create_app
from pipeline.http.guard import check_listen, parse_listen

BACKLOG = 128

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


def listen_socket(listen: str) -> socket.socket:
    """A socket bound to ``listen`` and listening: what ``serve_http`` serves on.

    ``pipeline serve`` binds it before it touches the state directory, so a taken address
    costs nothing but one line. Raises ``ListenRefused`` for a malformed address and
    ``PipelineError`` (``cannot listen on HOST:PORT: address already in use``) when the
    address cannot be bound.
    """
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise PipelineError(f"cannot listen on {listen}: {reason[:1].lower()}{reason[1:]}",
                            ) from None
    return sock


async def serve_http(daemon: Daemon, *, listen: str, token: str | None = None,
                     read_only: bool = False, sock: socket.socket | None = None,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API and the status page on ``sock`` (default: one bound to ``listen`` now)
    until cancelled; the socket is closed on the way out.

    ``read_only``: the pages show no control, and POST and DELETE are refused (403).
    ``task_status.started`` gets the bound address as a URL (``http://127.0.0.1:PORT``, with
    the real port when port 0 was asked). Raises ``ListenRefused`` for an address
    ``check_listen`` refuses and ``PipelineError`` when the address cannot be bound.
    """
    check_listen(listen, token)
    if sock is None:
        sock = await trio.to_thread.run_sync(listen_socket, listen)
    config = Config()
    # Hypercorn takes the bound socket over by its descriptor (and closes it when it stops);
    # it never binds anything itself, so it cannot fail on the address.
    config.bind = [f"fd://{sock.detach()}"]
    config.backlog = BACKLOG
    config.accesslog = None
    config.errorlog = _hypercorn_log()
    config.include_server_header = False
    config.graceful_timeout = 2.0
    app = cast(Any, create_app(daemon, token=token, read_only=read_only))
    await trio.to_thread.run_sync(page.warm)
    await hypercorn_serve(app, config, mode="asgi", task_status=_Bound(task_status, token))


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



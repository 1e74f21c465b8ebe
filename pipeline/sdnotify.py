"""Telling systemd how the daemon is doing (sd_notify(3)), without a dependency.

Under a unit with ``Type=notify`` systemd sets ``NOTIFY_SOCKET``: the path of a datagram socket
(``@name`` for one in the abstract namespace). Each notification is one datagram of
newline-separated ``KEY=VALUE`` lines: ``READY=1`` once the jobs are loaded and the HTTP
address listens, ``STOPPING=1`` when a signal asked the daemon to stop, ``STATUS=...`` for
``systemctl status``, and ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` when the unit sets
``WatchdogSec=``: the pings come from a task of the daemon's own trio loop, so a loop that
hangs stops them and systemd restarts the service.

Without ``NOTIFY_SOCKET`` (not under systemd, or another ``Type=``) every call does nothing. A
notification that cannot be sent is dropped (and logged at debug level): the service manager
judges the daemon by what arrives, and nothing here may stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import trio
from loguru import logger


def _address(environ: Mapping[str, str]) -> str | None:
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]  # the abstract namespace
    if address.startswith("/"):
        return address
    return None  # unset, or a kind of socket (vsock) this does not speak


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines) to the service manager as one datagram.

    True if it was sent; False without ``NOTIFY_SOCKET`` or when it could not be sent (never
    raises). The send does not block: a full socket buffer drops the message.
    """
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        logger.debug("cannot notify the service manager ({}): {}", message.split("\n")[0], exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, when that is set for
    this process (``WATCHDOG_PID`` unset, or ours) and a notification socket is there; else
    None."""
    environ = os.environ if environ is None else environ
    if _address(environ) is None:
        return None
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog_forever(interval: float, *,
                           send: Callable[[str], object] = notify) -> None:
    """``WATCHDOG=1`` now and every ``interval`` seconds, until cancelled."""
    while True:
        send("WATCHDOG=1")
        await trio.sleep(interval)

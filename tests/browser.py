"""A headless Chromium driven over the DevTools protocol, for the page tests and screenshots.

No WebDriver and no extra package: Chromium's ``--remote-debugging-pipe`` reads protocol
commands (JSON, each ended by a NUL byte) on its file descriptor 3 and writes answers and
events on 4. ``open_browser`` starts Debian's ``chromium`` with those two pipes, and a
``Tab`` navigates, emulates a phone or a dark scheme, runs a script, presses keys and takes
screenshots. Every call has a deadline (``trio.fail_after``), so a browser that hangs fails
the test instead of holding it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CALL_TIMEOUT = 30.0


class BrowserError(Exception):
    """The browser answered a command with an error, or a page's script threw."""


@dataclass
class _Connection:
    send_stream: trio.lowlevel.FdStream
    receive_stream: trio.lowlevel.FdStream
    next_id: int = 0
    waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = field(default_factory=dict)
    listeners: list[tuple[str, str | None, trio.MemorySendChannel[dict[str, Any]]]] = field(
        default_factory=list)

    async def call(self, method: str, session: str | None = None,
                   **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self.waiting[self.next_id] = send
        await self.send_stream.send_all(json.dumps(message).encode() + b"\0")
        with trio.fail_after(CALL_TIMEOUT):
            answer = await receive.receive()
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def read_forever(self) -> None:
        buffer = b""
        while True:
            data = await self.receive_stream.receive_some(1 << 16)
            if not data:
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    waiter = self.waiting.pop(message["id"], None)
                    if waiter is not None:
                        waiter.send_nowait(message)
                    continue
                for method, session, channel in list(self.listeners):
                    if message.get("method") == method and (
                            session is None or message.get("sessionId") == session):
                        try:
                            channel.send_nowait(message.get("params", {}))
                        except (trio.WouldBlock, trio.BrokenResourceError):
                            pass


class Tab:
    """One page of the browser (a target attached in flat mode)."""

    def __init__(self, connection: _Connection, session: str) -> None:
        self.connection = connection
        self.session = session
        self.console: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.connection.call(method, self.session, **params)

    async def goto(self, url: str, *, settle: float = 0.1) -> None:
        """Load ``url`` and wait for its load event (then ``settle`` seconds for scripts)."""
        send, receive = trio.open_memory_channel[dict[str, Any]](8)
        listener = ("Page.loadEventFired", self.session, send)
        self.connection.listeners.append(listener)
        try:
            answer = await self.call("Page.navigate", url=url)
            if answer.get("errorText"):
                raise BrowserError(f"{url}: {answer['errorText']}")
            with trio.fail_after(CALL_TIMEOUT):
                await receive.receive()
        finally:
            self.connection.listeners.remove(listener)
        await trio.sleep(settle)

    async def size(self, width: int, height: int, *, mobile: bool = False,
                   scale: float = 1.0) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=scale, mobile=mobile)
        await self.call("Emulation.setTouchEmulationEnabled", enabled=mobile,
                        maxTouchPoints=5)

    async def scheme(self, dark: bool) -> None:
        await self.call("Emulation.setEmulatedMedia", features=[
            {"name": "prefers-color-scheme", "value": "dark" if dark else "light"},
            {"name": "prefers-reduced-motion", "value": "reduce"}])

    async def scripts(self, enabled: bool) -> None:
        await self.call("Emulation.setScriptExecutionDisabled", value=not enabled)

    async def evaluate(self, expression: str, *, wait: bool = True) -> Any:
        """The value of ``expression`` (awaited when it is a promise), as JSON."""
        answer = await self.call("Runtime.evaluate", expression=expression,
                                 awaitPromise=wait, returnByValue=True)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed: {text}")
        return answer.get("result", {}).get("value")

    async def text(self) -> str:
        return str(await self.evaluate("document.body.innerText"))

    async def html(self) -> str:
        return str(await self.evaluate("document.documentElement.outerHTML"))

    async def wait_for(self, expression: str, *, within: float = 10.0) -> Any:
        """Poll ``expression`` until it is truthy (for at most ``within`` seconds)."""
        with trio.fail_after(within):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(0.1)

    async def press(self, key: str, *, shift: bool = False) -> None:
        """A key press as a person makes it (``Tab``, ``Enter``, ``a``)."""
        codes = {"Tab": 9, "Enter": 13, "Escape": 27, " ": 32}
        common: dict[str, Any] = {"key": key, "modifiers": 8 if shift else 0,
                                  "windowsVirtualKeyCode": codes.get(key, ord(key[0].upper()))}
        if key == "Enter":
            common["text"] = "\r"
        elif len(key) == 1:
            common["text"] = key
        await self.call("Input.dispatchKeyEvent", type="keyDown", **common)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    async def screenshot(self, path: Path, *, full_page: bool = True,
                         max_height: int = 6000) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.call("Page.getLayoutMetrics")
            content = metrics["cssContentSize"]
            viewport = metrics["cssLayoutViewport"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": viewport["clientWidth"],
                "height": min(content["height"], max_height), "scale": 1})
        answer = await self.call("Page.captureScreenshot", **params)
        await trio.Path(path).write_bytes(base64.b64decode(answer["data"]))


@asynccontextmanager
async def open_browser(profile: Path) -> AsyncIterator[Tab]:
    """A fresh headless Chromium (its profile in ``profile``) with one tab; ended on exit."""
    if CHROMIUM is None:
        raise BrowserError("chromium is not installed (apt-get install chromium)")
    await trio.Path(profile).mkdir(parents=True, exist_ok=True)
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # The browser wants the pipes as its descriptors 3 and 4: bash puts them there (dash
    # takes one-digit descriptors only).
    command = ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}',
               CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox",
               "--disable-gpu", "--disable-background-networking", "--no-first-run",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               "--disable-extensions", "--mute-audio", "--no-default-browser-check",
               f"--user-data-dir={profile}", "about:blank"]
    process = await trio.lowlevel.open_process(
        command, pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    os.close(to_browser_r)
    os.close(from_browser_w)
    connection = _Connection(trio.lowlevel.FdStream(to_browser_w),
                             trio.lowlevel.FdStream(from_browser_r))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.read_forever)
            target = await connection.call("Target.createTarget", url="about:blank")
            attached = await connection.call("Target.attachToTarget",
                                             targetId=target["targetId"], flatten=True)
            tab = Tab(connection, attached["sessionId"])
            await tab.call("Page.enable")
            await tab.call("Runtime.enable")
            try:
                yield tab
            finally:
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    try:
                        await connection.call("Browser.close")
                    except (BrowserError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            if process.returncode is None:
                try:
                    os.killpg(process.pid, 15)
                except ProcessLookupError:
                    pass
            await process.wait()
        try:
            os.killpg(process.pid, 9)  # whatever the browser started, too
        except ProcessLookupError:
            pass
        await connection.send_stream.aclose()
        await connection.receive_stream.aclose()

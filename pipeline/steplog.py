"""What a step leaves behind besides its exit status: its log file and its outputs.

A step's output goes to ``logs/JOB/RUN_ID/STEP.log`` as it arrives, secrets masked, capped in
size (the head and the tail are kept); the ``key=value`` lines it writes to
``$PIPELINE_OUTPUT`` become ``steps.<id>.outputs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger

from pipeline.faults import armed as faults_armed
from pipeline.faults import crash_point
from pipeline.redact import Redactor, StreamRedactor

DEFAULT_LOG_CAP = 10 * 1024 * 1024
HEAD_SHARE = 0.1  # of a capped log, the head keeps this share and the tail the rest
COPY_SIZE = 1024 * 1024  # putting a capped log together: what is in memory at once


def parse_outputs(text: str) -> tuple[dict[str, str], list[str]]:
    """Outputs written to $PIPELINE_OUTPUT: ``key=value`` lines and ``key<<DELIM`` blocks.

    Returns the outputs and a warning per line that is neither.
    """
    outputs: dict[str, str] = {}
    warnings: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, _, delim = line.partition("<<")
            block: list[str] = []
            while i < len(lines) and lines[i] != delim:
                block.append(lines[i])
                i += 1
            if i >= len(lines):
                warnings.append(f"output {key!r}: no closing {delim!r}")
                break
            i += 1
            value = "\n".join(block)
        elif "=" in line:
            key, _, value = line.partition("=")
        else:
            warnings.append(f"ignored output line {line[:80]!r}: expected key=value")
            continue
        key = key.strip()
        if not key or not (key[0].isalpha() or key[0] == "_") or not all(
                c.isalnum() or c in "_-" for c in key):
            warnings.append(f"ignored output with a bad key {key[:80]!r}")
            continue
        outputs[key] = value
    return outputs, warnings


class StepLog:
    """A step's log file: output appended as it arrives, secrets masked, capped in size.

    Writes go straight to the file from the trio thread: a write of at most one 64 KiB chunk
    to a regular file returns from the page cache and we never fsync logs. A write error (a full
    disk) stops the logging of this step, once, and never fails the step.

    Past ``cap`` bytes, the head (the first ``HEAD_SHARE`` of the cap) and the tail (the rest
    of the cap: the end, where errors are) are kept, with a marker line between them saying
    how many bytes were dropped (CONTRACT §8). Until the cap the file simply grows, so a live
    reader sees it. Beyond it the output goes round two hidden window files of the tail's
    size, each emptied when its turn comes again: the last window and the one before it
    always hold the tail, and disk and memory stay bounded however much a step prints. On
    ``close`` the file becomes head, marker, tail.
    """

    def __init__(self, base: Path, relpath: str, *, cap: int, redactor: Redactor) -> None:
        self.base = base
        self.relpath = relpath  # joined to ``base`` when first written: most steps never are
        self.cap = max(cap, 0)
        self.head = int(self.cap * HEAD_SHARE)
        self.window = self.cap - self.head  # the tail's size
        self.written = 0  # bytes of output, masked, kept or not
        self._stream = StreamRedactor(redactor) if redactor else None
        self._redactor = redactor
        self._file: Any = None  # opened on the first write: a silent step costs no file
        self._broken = False
        self._windows: list[BinaryIO] = []  # the two window files, made at the first overflow
        self._turn = 0  # how many windows past the cap have been begun
        self._filled = 0  # bytes in the current window
        self._head_ends_a_line = True

    # One message per condition, not per step: a full disk would otherwise log an error for
    # every step of every run until space returns.
    _failing: str | None = None

    def _fail(self, exc: OSError) -> None:
        condition = exc.strerror or str(exc)
        if not self._broken and StepLog._failing != condition:
            logger.error("cannot write step logs: {} (first: {}); steps go on without their "
                         "output", condition, self.path)
            StepLog._failing = condition
        self._broken = True

    @classmethod
    def _recovered(cls) -> None:
        if cls._failing is not None:
            logger.info("writing step logs again")
            cls._failing = None

    @property
    def dropped(self) -> int:
        """Bytes of output that will not be in the log: past the cap, between head and tail."""
        return max(self.written - self.cap, 0)

    def _write(self, data: bytes) -> None:
        if not data or self._broken:
            return
        if self._file is None:
            try:
                path = self.path
                path.parent.mkdir(parents=True, exist_ok=True)
                # Read too: a capped log's head and tail are copied out of it on close.
                self._file = path.open("a+b", buffering=0)
            except OSError as exc:
                self._fail(exc)
                return
        try:
            before, room = self.written, self.cap - self.written
            self.written += len(data)
            if room > 0:
                kept = data[:room]
                if before < self.head <= before + len(kept):
                    self._head_ends_a_line = kept[self.head - before - 1] == 0x0A
                self._put(self._file, kept)
                data = data[room:]
            while data and self.window:
                if self._turn == 0 or self._filled == self.window:
                    self._next_window()
                part = data[:self.window - self._filled]
                self._put(self._windows[self._turn % 2], part)
                self._filled += len(part)
                data = data[len(part):]
            if StepLog._failing is not None:
                StepLog._recovered()
        except OSError as exc:
            self._fail(exc)

    def _put(self, file: BinaryIO, data: bytes) -> None:
        if faults_armed("log-write"):
            half = len(data) // 2
            file.write(data[:half])
            crash_point("log-write")
            data = data[half:]
        file.write(data)

    def _next_window(self) -> None:
        if not self._windows:
            self._windows = [self._window_path(i).open("w+b", buffering=0) for i in (0, 1)]
        self._turn += 1
        current = self._windows[self._turn % 2]
        current.seek(0)
        current.truncate()
        self._filled = 0

    def _window_path(self, index: int) -> Path:
        path = self.path
        return path.with_name(f".{path.name}.tail{index}")

    def output(self, chunk: bytes) -> None:
        self._write(self._stream.feed(chunk) if self._stream else chunk)

    def line(self, text: str) -> None:
        """A line of our own (attempt markers, runner messages), masked like the output."""
        self.flush_output()
        data = (text.rstrip("\n") + "\n").encode()
        self._write(self._redactor.bytes(data) if self._redactor else data)

    def flush_output(self) -> None:
        if self._stream:
            self._write(self._stream.flush())

    @property
    def path(self) -> Path:
        return self.base / self.relpath

    @property
    def exists(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        self.flush_output()
        if self._file is not None:
            if self._windows and not self._broken:
                try:
                    self._put_together()
                except OSError as exc:
                    self._fail(exc)
            self._file.close()
        for index, window in enumerate(self._windows):
            window.close()
            try:
                self._window_path(index).unlink()
            except OSError:
                pass
        self._windows = []

    def _put_together(self) -> None:
        """Head, marker, tail: written to a new file that then replaces the log."""
        current = self._windows[self._turn % 2]
        # The window before the current one: the cap's own tail part of the log, or the
        # other window file. Its end and the current window are the tail.
        before, start = ((self._file, self.head) if self._turn == 1
                         else (self._windows[(self._turn + 1) % 2], 0))
        path = self.path
        fresh = path.with_name(f".{path.name}.new")
        try:
            with fresh.open("wb") as out:
                _copy(self._file, 0, self.head, out)
                out.write((("" if self._head_ends_a_line else "\n")
                           + cap_marker(self.dropped, self.head, self.window)).encode())
                _copy(before, start + self._filled, self.window - self._filled, out)
                _copy(current, 0, self._filled, out)
            os.replace(fresh, path)
        except OSError:
            fresh.unlink(missing_ok=True)
            raise


def cap_marker(dropped: int, head: int, tail: int) -> str:
    """The line between a capped log's head and tail."""
    return (f"[pipeline] {dropped} bytes dropped here: the log keeps the first {head} and the "
            f"last {tail} bytes\n")


def _copy(source: BinaryIO, offset: int, length: int, out: BinaryIO) -> None:
    """``length`` bytes of ``source`` from ``offset`` to ``out``, COPY_SIZE at a time."""
    source.seek(offset)
    while length > 0:
        chunk = source.read(min(length, COPY_SIZE))
        if not chunk:
            break
        out.write(chunk)
        length -= len(chunk)

"""What a step leaves behind besides its exit status: its log file and its outputs.

A step's output goes to ``logs/JOB/RUN_ID/STEP.log`` as it arrives, secrets masked, capped in
size; the ``key=value`` lines it writes to ``$PIPELINE_OUTPUT`` become ``steps.<id>.outputs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from pipeline.faults import armed as faults_armed
from pipeline.faults import crash_point
from pipeline.redact import Redactor, StreamRedactor

DEFAULT_LOG_CAP = 10 * 1024 * 1024


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
    """

    def __init__(self, base: Path, relpath: str, *, cap: int, redactor: Redactor) -> None:
        self.base = base
        self.relpath = relpath  # joined to ``base`` when first written: most steps never are
        self.cap = cap
        self.written = 0
        self.discarded = 0
        self._stream = StreamRedactor(redactor) if redactor else None
        self._redactor = redactor
        self._file: Any = None  # opened on the first write: a silent step costs no file
        self._broken = False

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

    def _write(self, data: bytes) -> None:
        if not data or self._broken:
            return
        if self._file is None:
            try:
                path = self.path
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = path.open("ab", buffering=0)
            except OSError as exc:
                self._fail(exc)
                return
        room = self.cap - self.written
        if len(data) > room:
            if self.discarded or room < 0:  # already cut, the marker written
                self.discarded += len(data)
                return
            self.discarded += len(data) - room
            data = data[:room] + (
                f"\n[pipeline] log truncated: over {self.cap} bytes of output\n".encode())
        self.written += len(data)
        try:
            if faults_armed("log-write"):
                half = len(data) // 2
                self._file.write(data[:half])
                crash_point("log-write")
                data = data[half:]
            self._file.write(data)
            if StepLog._failing is not None:
                StepLog._recovered()
        except OSError as exc:
            self._fail(exc)

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
        if self.discarded and self._file is not None and not self._broken:
            try:
                self._file.write(f"[pipeline] {self.discarded} bytes discarded\n".encode())
            except OSError as exc:
                self._fail(exc)
        if self._file is not None:
            self._file.close()

"""Step logs: the cap keeps the head and the tail, on real files, with bounded memory."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest

from pipeline.redact import Redactor
from pipeline.steplog import StepLog

NO_SECRETS = Redactor([])


def marker(dropped: int, head: int, tail: int) -> bytes:
    return (f"[pipeline] {dropped} bytes dropped here: the log keeps the first {head} and "
            f"the last {tail} bytes\n").encode()


def feed(log: StepLog, data: bytes, rng: random.Random) -> None:
    at = 0
    while at < len(data):
        size = rng.choice([1, 7, 64, 90, 91, 500, 65536])
        log.output(data[at:at + size])
        at += size
    log.close()


@pytest.mark.parametrize("size", [0, 5, 99, 100, 101, 189, 190, 191, 280, 281, 1000, 12345])
def test_past_the_cap_the_head_and_the_tail_are_kept(tmp_path: Path, size: int) -> None:
    rng = random.Random(size)
    data = bytes(rng.choice(b"abcdefghij\n") for _ in range(size))
    log = StepLog(tmp_path, "s.log", cap=100, redactor=NO_SECRETS)
    feed(log, data, rng)
    if size == 0:
        assert not (tmp_path / "s.log").exists()
        return
    written = (tmp_path / "s.log").read_bytes()
    if size <= 100:
        assert written == data
    else:
        head, tail = data[:10], data[-90:]
        gap = b"" if head.endswith(b"\n") else b"\n"
        assert written == head + gap + marker(size - 100, 10, 90) + tail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.log"]  # no window files left


def test_pipeline_lines_past_the_cap_land_in_the_tail(tmp_path: Path) -> None:
    log = StepLog(tmp_path, "s.log", cap=50, redactor=Redactor(["hunter22"]))
    log.output(b"x" * 200)
    log.line("[pipeline] exit status 7 hunter22")
    log.close()
    text = (tmp_path / "s.log").read_text()
    line = "[pipeline] exit status 7 ***\n"  # masked before it counts against the cap
    dropped = 200 + len(line) - 50
    assert text == ("xxxxx\n" + marker(dropped, 5, 45).decode()
                    + "x" * (45 - len(line)) + line)


def test_memory_stays_bounded_however_much_goes_through(tmp_path: Path) -> None:
    cap = 1024 * 1024
    chunk = bytes(range(256)) * 256  # 64 KiB, as a pipe read gives them
    log = StepLog(tmp_path, "s.log", cap=cap, redactor=NO_SECRETS)
    tracemalloc.start()
    try:
        for _ in range(800):  # 50 MiB
            log.output(chunk)
        log.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak
    head, tail = cap // 10, cap - cap // 10
    everything = chunk * 800
    expected = (everything[:head] + b"\n" + marker(len(everything) - cap, head, tail)
                + everything[-tail:])
    assert (tmp_path / "s.log").read_bytes() == expected

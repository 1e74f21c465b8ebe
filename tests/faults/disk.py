"""A small file system to fill up: a tmpfs, else an ext4 image on a loop device.

Both need root (or CAP_SYS_ADMIN); ``small_fs`` raises ``Unavailable`` with the reason when
neither can be mounted, for the tests to skip with it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unavailable(Exception):
    """No small file system can be mounted here."""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # something still holds it: detach now, free later


@contextmanager
def small_fs(path: Path, size_mb: int) -> Iterator[str]:
    """Mount a ``size_mb`` MiB file system on ``path`` (made if needed); yield its kind."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        raise Unavailable("no mount command")
    tmpfs = _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                 str(path))
    if tmpfs.returncode == 0:
        try:
            yield "tmpfs"
        finally:
            _unmount(path)
        return
    reasons = [f"tmpfs: {tmpfs.stderr.strip()}"]
    image = path.parent / f".{path.name}.ext4"
    with image.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image)) \
        if shutil.which("mkfs.ext4") else None
    loop = _run("mount", "-o", "loop", str(image), str(path)) \
        if made is not None and made.returncode == 0 else None
    if loop is None or loop.returncode != 0:
        image.unlink(missing_ok=True)
        reasons.append("ext4 on a loop device: " + (
            "no mkfs.ext4" if made is None else made.stderr.strip() if made.returncode
            else loop.stderr.strip() if loop else ""))
        raise Unavailable("; ".join(reasons))
    try:
        yield "ext4 (loop)"
    finally:
        _unmount(path)
        image.unlink(missing_ok=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, *, leave: int = 0, name: str = "filler") -> Path:
    """Write ``path/name`` until the file system has at most ``leave`` bytes free (0: until
    ENOSPC). Returns the filler, whose removal gives the space back."""
    filler = path / name
    chunk = b"\0" * 65536
    with filler.open("ab", buffering=0) as f:
        while True:
            room = free_bytes(path) - leave
            if leave and room <= 0:
                break
            try:
                f.write(chunk if not leave or room >= len(chunk) else chunk[:room])
            except OSError:
                break  # ENOSPC: full
    if not leave:
        # Page-granular file systems may keep a partial page: take it too.
        with filler.open("ab", buffering=0) as f:
            for size in (4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    continue
    return filler


def truncate_wal(state_dir: Path, *, timeout: float = 5.0) -> None:
    """Checkpoint ``state.db`` and truncate its WAL to zero bytes, so that the daemon's next
    commit has to allocate new space (a WAL reuses its file's space otherwise)."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None, timeout=timeout)
    try:
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy and (state_dir / "state.db-wal").stat().st_size == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("could not truncate the WAL (a reader held it)")
            time.sleep(0.02)
    finally:
        conn.close()

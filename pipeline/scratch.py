"""Where steps write ``$PIPELINE_OUTPUT``: one private directory per process, no file until a
step writes one.

A directory and an empty file per run cost more than a short step's whole spawn: profiled at
100 runs a second (tests/bench/profile.md), creating and removing them held the trio thread
for a third of its time, and ext4's inode allocator (which avoids recently freed inodes)
made it system CPU. So the directory is made once per process (mode 0700, in ``$TMPDIR``),
each attempt gets a fresh name in it, the step creates the file if it has something to say
(``echo k=v >> "$PIPELINE_OUTPUT"``), and the name is unlinked once read. A name is never
handed out twice in a process, so a stray background child of an old attempt cannot write
into a later one's outputs.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from pathlib import Path

_directory: Path | None = None
_names = itertools.count(1)


def output_path(run_id: str) -> Path:
    """A fresh path for one attempt's outputs, in the process's scratch directory.

    The directory is made on first use, and made again if something removed it meanwhile
    (``systemd-tmpfiles`` ages out idle directories under ``/tmp``): a ``stat`` per attempt,
    which creates nothing. Raises OSError when it cannot be made.
    """
    global _directory
    if _directory is None or not _directory.is_dir():
        _directory = Path(tempfile.mkdtemp(prefix="pipeline-outputs-"))
        atexit.register(shutil.rmtree, _directory, ignore_errors=True)
    return _directory / f"{run_id}.{next(_names)}.out"


def read_output(path: Path, cap: int) -> str:
    """The first ``cap`` bytes the step wrote to ``path``; empty when it wrote nothing."""
    try:
        with open(path, "rb") as file:
            return file.read(cap).decode(errors="replace")
    except OSError:  # not written (the usual case), or not a file
        return ""


def discard(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

"""``python -m tests.faults kill-loop [N [SEED]]`` or ``python -m tests.faults crash-points``:
the harnesses at any size, from a checkout's root; exit status 1 if an invariant broke."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pipeline.faults import POINTS

from .harness import crash_point_cycle, kill_loop, sizes


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "kill-loop"
    with tempfile.TemporaryDirectory(prefix="pipeline-faults-") as tmp:
        if what == "kill-loop":
            n = int(argv[1]) if len(argv) > 1 else sizes().kills
            seed = int(argv[2]) if len(argv) > 2 else None
            result = kill_loop(Path(tmp), n, seed=seed)
            print(result.summary())
            return 0 if result.ok else 1
        if what == "crash-points":
            ok = True
            for point in POINTS:
                outcome = crash_point_cycle(Path(tmp) / point, point)
                print(outcome.describe())
                ok = ok and outcome.ok
            return 0 if ok else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Functions the `health` job calls with `uses: python` (the job file's directory is on the
function's sys.path, so a module beside the job is found by its name)."""

from __future__ import annotations

import os
import shutil


def disk_usage(path: str = "/", warn_at: float = 90.0) -> dict[str, object]:
    """How full the filesystem holding ``path`` is; raises if it is fuller than ``warn_at`` %."""
    usage = shutil.disk_usage(path)
    percent = round(100 * usage.used / usage.total, 1)
    if percent > warn_at:
        raise RuntimeError(f"{path} is {percent}% full (limit {warn_at}%)")
    return {"path": path, "used_percent": percent, "free_gib": round(usage.free / 2**30, 1)}


def load_average() -> dict[str, object]:
    """The 1, 5 and 15 minute load averages, and the number of CPUs they compare to."""
    one, five, fifteen = os.getloadavg()
    return {"load1": one, "load5": five, "load15": fifteen, "cpus": os.cpu_count() or 1}

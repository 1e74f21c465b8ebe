"""contrib/systemd/pipeline.service: systemd's own checker accepts it, and it says what the
daemon needs (notify, the mixed kill mode, a writable state directory and nothing else)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "systemd" / "pipeline.service"
INSTALLED = "/usr/local/bin/pipeline"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (no systemd on this machine)")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's command,
    # and change nothing else.
    text = UNIT.read_text()
    start = f"ExecStart={INSTALLED} "
    assert text.count(start) == 1
    unit = tmp_path / "pipeline.service"
    here = Path(sys.executable).with_name("pipeline")
    unit.write_text(text.replace(start, f"ExecStart={here} "))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    # A bad value is only a warning ("..., ignoring"): any word from it fails the test.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    caught = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                            text=True, timeout=60)
    assert "KillMode" in caught.stderr or "kill mode" in caught.stderr  # the check can fail


def test_the_unit_says_what_the_daemon_needs() -> None:
    found = directives(UNIT.read_text())
    one = {key: values[-1] for key, values in found.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["KillMode"] == "mixed" and one["KillSignal"] == "SIGTERM"
    assert one["NoNewPrivileges"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["WatchdogSec"] and one["ExecStart"].startswith(f"{INSTALLED} serve")
    # The one writable place is the state directory the daemon is told to use.
    environment = dict(value.split("=", 1) for value in found["Environment"])
    state = environment["PIPELINE_STATE_DIR"]
    assert one["ReadWritePaths"] == state == f"/var/lib/{one['StateDirectory']}"
    # Stopping takes the daemon's grace (30s) plus a step's (10s): systemd waits longer.
    assert int(one["TimeoutStopSec"]) > 40

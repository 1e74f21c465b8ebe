"""The status page in a real browser: Debian's chromium, headless, against a real daemon.

Screenshots (laptop and phone widths, a live run and a failed one) are kept in the test's
``tmp_path`` as artifacts; ``--dump-dom`` gives the page after its script ran, which is what
the assertions read.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trio

from tests.test_http import JOBS, first_output, open_daemon, seed_failed_schedule, wait_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None,
                                 reason="chromium is not installed (apt-get install chromium)")]

LONG = """
name: long
description: Takes its time
steps:
  - id: warm-up
    run: echo warming up; sleep 20
  - id: cool-down
    needs: [warm-up]
    run: echo done
"""


async def chromium(tmp_path: Path, url: str, *, screenshot: Path | None = None,
                   size: str = "1280,900") -> str:
    """Load ``url`` in a fresh headless chromium; the DOM it ended with, or a screenshot."""
    assert CHROMIUM is not None
    profile = tmp_path / f"profile-{screenshot.stem if screenshot else 'dom'}"
    profile.mkdir(exist_ok=True)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--no-first-run",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={size}"]
    command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    with trio.fail_after(30):
        done = await trio.run_process([*command, url], capture_stdout=True,
                                      capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    if screenshot is not None:
        # A page was drawn, not a blank one.
        assert (await trio.Path(screenshot).stat()).st_size > 10_000
    return done.stdout.decode()


async def test_status_page_and_run_pages_in_chromium(tmp_path: Path) -> None:
    seed_failed_schedule(tmp_path / "state", "breaker", datetime.now(UTC))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with open_daemon(tmp_path, jobs={**JOBS, "long.yaml": LONG}) as daemon:
        assert daemon.listen is not None
        base = daemon.listen
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await wait_run(http, (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"])
            failed = (await http.post("/api/v1/jobs/fails/runs")).json()["run_id"]
            await wait_run(http, failed)
            live = (await http.post("/api/v1/jobs/long/runs")).json()["run_id"]
            await first_output(daemon, f"/api/v1/runs/{live}/steps/warm-up/log")

        index = await chromium(tmp_path, base + "/")
        for text in ("hello", "fails", "long", "breaker", "Says hello", "broken.yaml",
                     "takes only one of run, exec, uses", "circuit open", "running",
                     "succeeded", "failed", "Invalid job files"):
            assert text in index, text
        run_page = await chromium(tmp_path, f"{base}/runs/{failed}")
        for text in ("fails", "boom", "failed", "about to fail", "exit status 3"):
            assert text in run_page, text
        live_page = await chromium(tmp_path, f"{base}/runs/{live}")
        for text in ("warm-up", "running", "warming up", "cool-down", "pending", "Stop"):
            assert text in live_page, text

        two_at_once = trio.CapacityLimiter(2)  # 2 cores

        async def shoot(name: str, path: str, size: str) -> None:
            async with two_at_once:
                await chromium(tmp_path, base + path, screenshot=shots / name, size=size)

        async with trio.open_nursery() as nursery:
            for name, path, size in (
                    ("index.png", "/", "1280,900"), ("index-phone.png", "/", "390,1300"),
                    ("run-failed.png", f"/runs/{failed}", "1280,900"),
                    ("run-live-phone.png", f"/runs/{live}", "390,1000")):
                nursery.start_soon(shoot, name, path, size)
    assert len(list(shots.glob("*.png"))) == 4

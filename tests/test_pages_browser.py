"""The status pages as people use them: headless Chromium (DevTools protocol, tests/browser.py)
over a daemon with real runs (tests/screens.py). Each page at phone and desktop widths, light
and dark, checked by axe-core (bin/axe); a live run updating in place, logs filtered and
followed, the parameter form refusing a bad value and then starting a run, the strip of runs
used with the keyboard and by touch, and every page read with JavaScript off.

Chromium and axe-core are skipped when missing, except under ``CI=true`` (.ci/run installs
both), where a missing tool fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.browser import CHROMIUM, Tab, open_browser
from tests.screens import SIZES, Staged, pages, shoot, staged

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _need(found: bool, why: str) -> None:
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI=true: the tools must be there)")
        pytest.skip(why)


def axe_script() -> str:
    """axe-core's script, as bin/axe installed it (installing it if node and npm are here)."""
    if shutil.which("npm") is None and not (ROOT / ".cache/axe").exists():
        _need(False, "axe-core is not installed and npm is missing (run bin/axe --install)")
    done = subprocess.run([str(ROOT / "bin" / "axe"), "--install"], capture_output=True,
                          text=True, timeout=300)
    _need(done.returncode == 0, f"bin/axe --install failed: {done.stderr[-500:]}")
    return Path(done.stdout.strip()).read_text()


@asynccontextmanager
async def scene(tmp_path: Path) -> AsyncIterator[tuple[Staged, Tab]]:
    _need(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")
    async with staged(tmp_path) as stage, open_browser(tmp_path / "profile") as tab:
        try:
            yield stage, tab
        finally:
            stage.daemon.worker.kill_all()


AXE_RUN = """axe.run(document, {resultTypes: ["violations"]}).then(r => r.violations.map(v =>
  ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 3).map(n => n.html.slice(0, 160))})))"""


@pytest.mark.timeout(600)
async def test_every_page_passes_axe_light_and_dark_at_both_widths(tmp_path: Path) -> None:
    script = axe_script()
    shots = tmp_path / "screenshots"
    await trio.Path(shots).mkdir()
    found: list[dict[str, Any]] = []
    checked = 0
    async with scene(tmp_path) as (stage, tab):
        paths = {**pages(stage), "job-stale": "/jobs/tmp-cleanup",
                 "job-invalid": "/jobs/half-done", "job-manual": "/jobs/sync-crm",
                 "index-no-match": "/?q=no-such-job"}  # the empty state's link
        for size, (width, height, mobile) in SIZES.items():
            await tab.size(width, height, mobile=mobile)
            for dark in (False, True):
                await tab.scheme(dark)
                for name, path in paths.items():
                    await tab.goto(stage.base + path, settle=0.2)
                    await tab.evaluate(script + ";0", wait=False)
                    for violation in await tab.evaluate(AXE_RUN):
                        found.append({"page": name, "size": size, "dark": dark, **violation})
                    checked += 1
        # The pictures the README shows, taken the same way (kept as this test's artifacts).
        taken = await shoot(tab, stage, shots)
    assert checked == len(SIZES) * 2 * 11
    assert len(taken) == 12
    for picture in taken:
        assert (await trio.Path(picture).stat()).st_size > 10_000  # a page, not a blank
    await trio.Path(tmp_path / "axe.json").write_text(json.dumps(found, indent=1))
    grave = [v for v in found if v["impact"] in ("serious", "critical")]
    assert not grave, json.dumps(grave, indent=1)


@pytest.mark.timeout(240)
async def test_a_person_uses_the_pages(tmp_path: Path) -> None:
    async with scene(tmp_path) as (stage, tab):
        await tab.size(1280, 900)
        async with httpx.AsyncClient(base_url=stage.base, timeout=10) as http:
            # A live run updates in place: its log grows, and it ends without a reload.
            await tab.goto(f"{stage.base}/runs/{stage.live}")
            await tab.evaluate("window.kept = 'this page'")
            count = "document.querySelectorAll('#log-crunch .ln').length"
            before = await tab.evaluate(count)
            await tab.wait_for(f"{count} > {before} + 3", within=15)
            assert await tab.evaluate("document.querySelector('#log-follow').checked")
            await http.post(f"/api/v1/runs/{stage.live}/stop")
            await tab.wait_for("document.querySelector('h1 .badge').textContent === "
                               "'cancelled'", within=15)
            assert await tab.evaluate("window.kept") == "this page"  # never reloaded
            # The followed log got its last lines too, written as the step was stopped.
            await tab.wait_for("[...document.querySelectorAll('#log-crunch .ln')].some(l => "
                               "l.textContent.startsWith('[pipeline] stopped'))", within=10)
            assert await tab.evaluate("document.querySelector('main').dataset.refresh") == "0"

            # The filter box hides the lines that do not match, as one types.
            await tab.goto(f"{stage.base}/runs/{stage.backup}")
            await tab.evaluate("document.querySelectorAll('details.log').forEach(d => "
                               "d.open = true); document.querySelector('#log-filter').focus()")
            await tab.call("Input.insertText", text="uploaded")
            shown = await tab.evaluate("[...document.querySelectorAll('#logs .ln')].filter(l "
                                       "=> !l.hidden).map(l => l.textContent)")
            assert sorted(shown) == [f"uploaded to s3://backups-{r}/"
                                     for r in ("ap-south", "eu-west", "us-east")]
            assert "3 of" in await tab.evaluate("document.querySelector('#log-count')"
                                                ".textContent")

            # A failed run's failed steps run again from its page; the new run links back.
            await tab.goto(f"{stage.base}/runs/{stage.failed}")
            await tab.evaluate("[...document.querySelectorAll('button')].find(b => "
                               "b.textContent === 'Rerun failed steps').click()")
            href = await tab.wait_for("location.pathname !== '/runs/" + stage.failed
                                      + "' && location.pathname")
            rerun = (await http.get(f"/api/v1{href}", params={"wait": 20})).json()
            assert rerun["rerun_of"] == stage.failed and rerun["trigger"] == "rerun"
            assert await tab.evaluate(f"document.querySelector('#facts a[href=\"/runs/"
                                      f"{stage.failed}\"]') !== null")

            # The parameter form refuses a bad number, then starts a run with what was set.
            job_url = f"{stage.base}/jobs/nightly-backup"
            await tab.goto(job_url)
            await tab.evaluate("document.querySelector('#p-keep_days').value = '1.5';"
                               "document.querySelector('form.params button[type=submit]')"
                               ".click()")
            await trio.sleep(0.5)
            assert await tab.evaluate("location.href") == job_url
            assert not await tab.evaluate("document.querySelector('#p-keep_days')"
                                          ".validity.valid")
            await tab.evaluate("""
                document.querySelector('#p-keep_days').value = '3';
                document.querySelector('#p-target').value = '"staging"';
                document.querySelector('#p-verify').checked = false;
                document.querySelector('form.params button[type=submit]').click()""")
            href = await tab.wait_for("location.pathname.startsWith('/runs/') && "
                                      "location.pathname")
            run = (await http.get(f"/api/v1{href}", params={"wait": 20})).json()
            assert run["params"] == {"keep_days": 3, "target": "staging", "verify": False}
            assert run["trigger"] == "api"

            # Pause with a reason, then resume: the page changes in place each time.
            await tab.goto(job_url)
            await tab.evaluate("window.kept = 'job page'; "
                               "document.querySelector('#pause-reason').focus()")
            await tab.call("Input.insertText", text="db migration")
            await tab.evaluate("document.querySelector('#controls button[type=submit]')"
                               ".click()")
            await tab.wait_for("document.querySelector('h1 .s-paused') !== null")
            assert (await http.get("/api/v1/jobs/nightly-backup")).json()[
                "paused_reason"] == "db migration"
            await tab.evaluate("[...document.querySelectorAll('button')].find(b => "
                               "b.textContent === 'Resume').click()")
            await tab.wait_for("document.querySelector('h1 .s-paused') === null && "
                               "document.querySelector('#pause-reason') !== null")
            assert await tab.evaluate("window.kept") == "job page"
            assert not (await http.get("/api/v1/jobs/nightly-backup")).json()["paused"]

            # The strip of runs with the keyboard: Tab to a square, Enter opens its run.
            await tab.goto(job_url)
            for _ in range(40):
                await tab.press("Tab")
                if await tab.evaluate("document.activeElement.matches('a.sq')"):
                    break
            target = await tab.evaluate("document.activeElement.getAttribute('href')")
            assert target.startswith("/runs/")
            assert await tab.evaluate("getComputedStyle(document.activeElement"
                                      ".querySelector('.tip')).display") == "block"
            await tab.press("Enter")
            await tab.wait_for(f"location.pathname === {json.dumps(target)}")

            # By touch: the first tap shows the run, the second opens it.
            await tab.size(390, 844, mobile=True)
            await tab.goto(job_url)
            box = await tab.evaluate("(() => { const r = document.querySelectorAll('a.sq')[3]"
                                     ".getBoundingClientRect(); return [r.x + r.width / 2, "
                                     "r.y + r.height / 2, document.querySelectorAll('a.sq')[3]"
                                     ".getAttribute('href')]; })()")
            x, y, tapped = box

            async def tap() -> None:
                point = [{"x": x, "y": y}]
                await tab.call("Input.dispatchTouchEvent", type="touchStart", touchPoints=point)
                await tab.call("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])
                await trio.sleep(0.4)

            await tab.evaluate("window.scrollTo(0, 0)")
            await tap()
            assert await tab.evaluate("location.href") == job_url
            assert await tab.evaluate("document.querySelectorAll('a.sq')[3].classList"
                                      ".contains('armed')")
            await tap()
            await tab.wait_for(f"location.pathname === {json.dumps(tapped)}")


@pytest.mark.timeout(180)
async def test_the_pages_read_without_javascript(tmp_path: Path) -> None:
    async with scene(tmp_path) as (stage, tab):
        await tab.scripts(False)
        await tab.size(1280, 900)
        await tab.goto(f"{stage.base}/runs/{stage.backup}")
        assert await tab.evaluate("document.querySelectorAll('.gantt .bar').length") >= 9
        assert await tab.evaluate("document.querySelectorAll('.dag rect').length") == 7
        text = await tab.text()
        assert "pg_dump" in text or "compress" in text
        # The filter is a GET form: the server keeps the matching lines.
        await tab.goto(f"{stage.base}/runs/{stage.backup}?grep=uploaded#logs")
        lines = await tab.evaluate("[...document.querySelectorAll('#logs .ln')]"
                                   ".map(l => l.textContent)")
        assert len(lines) == 3 and all(line.startswith("uploaded to") for line in lines)
        assert await tab.evaluate("document.querySelector('#log-follow').closest('label')"
                                  ".hidden")  # following needs the script: not offered
        # The index filters with its GET form too; the job page shows its file and fires.
        await tab.goto(f"{stage.base}/?q=backup&status=succeeded")
        names = await tab.evaluate("[...document.querySelectorAll('#jobs a.name')]"
                                   ".map(a => a.textContent)")
        assert names == ["nightly-backup"]
        await tab.goto(f"{stage.base}/jobs/tmp-cleanup")
        assert await tab.evaluate("document.querySelector('li.err .msg').textContent"
                                  ".includes('got \\'soon\\'')")
        assert await tab.evaluate("document.querySelectorAll('ol.fires li').length") == 10

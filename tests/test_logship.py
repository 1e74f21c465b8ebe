"""Step logs shipped to the store, read back from any node (real files, a real store)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipeline.events import RunFinished, RunQueued, StepFinished, StepStarted
from pipeline.logship import CHUNK, LogShipper, read_any
from pipeline.model import RunStatus, StepStatus, Trigger
from pipeline.store.postgres import PostgresStore
from pipeline.store.sqlite import SqliteStore

NOW = datetime(2026, 12, 7, tzinfo=UTC)
RUN = "20261207T000000-0000abcd"
REL = f"logs/job/{RUN}/s.log"


async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def setup(tmp_path: Path) -> tuple[SqliteStore, LogShipper, Path]:
    store = SqliteStore.open(tmp_path / "state")
    store.record([RunQueued(RUN, "job", Trigger.API, NOW),
                  StepStarted(RUN, "s", 1, NOW, REL)])
    shipper = LogShipper(store, tmp_path / "state", offload=inline)
    path = tmp_path / "state" / REL
    path.parent.mkdir(parents=True)
    return store, shipper, path


async def test_live_output_is_shipped_as_it_grows_then_whole_at_the_end(tmp_path: Path) -> None:
    store, shipper, path = setup(tmp_path)
    shipper.observe(StepStarted(RUN, "s", 1, NOW, REL))
    await shipper.ship()  # nothing written yet: nothing shipped
    assert store.shipped_log(RUN, "s") == (b"", None)
    path.write_bytes(b"one\n")
    await shipper.ship()
    with path.open("ab") as f:
        f.write(b"two\n")
    await shipper.ship()
    assert store.shipped_log(RUN, "s") == (b"one\ntwo\n", None)  # live: not complete
    assert store.shipped_log(RUN, "s", 4) == (b"two\n", None)
    # The step ends and its (capped) log was put together anew: the final version wins.
    path.write_bytes(b"head\n[pipeline] 9 bytes dropped here\ntail\n")
    store.record([StepFinished(RUN, "s", StepStatus.SUCCEEDED, NOW, attempt=1)])
    shipper.observe(StepFinished(RUN, "s", StepStatus.SUCCEEDED, NOW, attempt=1))
    await shipper.ship()
    data, size = store.shipped_log(RUN, "s")
    assert data == b"head\n[pipeline] 9 bytes dropped here\ntail\n" and size == len(data)


async def test_a_big_log_goes_in_chunks_and_reads_back_whole(tmp_path: Path) -> None:
    store, shipper, path = setup(tmp_path)
    body = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    path.write_bytes(body)
    shipper.observe(StepStarted(RUN, "s", 1, NOW, REL))
    shipper.observe(StepFinished(RUN, "s", StepStatus.SUCCEEDED, NOW, attempt=1))
    await shipper.ship()
    got, start = b"", 0
    while True:
        data, size = store.shipped_log(RUN, "s", start, limit=100_000)
        if not data:
            break
        got, start = got + data, start + len(data)
    assert got == body and size == len(body)


async def test_a_step_that_wrote_nothing_ships_an_empty_complete_log(tmp_path: Path) -> None:
    store, shipper, _ = setup(tmp_path)
    shipper.observe(StepStarted(RUN, "s", 1, NOW, REL))
    shipper.observe(StepFinished(RUN, "s", StepStatus.SUCCEEDED, NOW, attempt=1))
    await shipper.ship()
    assert store.shipped_log(RUN, "s") == (b"", 0)


async def test_readers_take_the_local_file_else_the_store(tmp_path: Path) -> None:
    store, shipper, path = setup(tmp_path)
    path.write_bytes(b"local\n")
    shipper.observe(StepStarted(RUN, "s", 1, NOW, REL))
    shipper.observe(StepFinished(RUN, "s", StepStatus.SUCCEEDED, NOW, attempt=1))
    await shipper.ship()
    assert read_any(store, tmp_path / "state", REL, RUN, "s", 0, 100) == (b"local\n", False)
    path.unlink()  # another node's reader: no file here
    assert read_any(store, tmp_path / "state", REL, RUN, "s", 2, 100) == (b"cal\n", True)
    # Retention takes the shipped log with its run.
    store.record([RunFinished(RUN, RunStatus.SUCCEEDED, NOW)])
    store.delete_run(RUN)
    assert store.shipped_log(RUN, "s") == (b"", None)


def test_in_a_cluster_a_whole_shipped_log_wins_over_a_stale_file_here(
        tmp_path: Path, postgres_url: str) -> None:
    """Found by the cluster harness: a node lost while it ran a step (frozen, cut off) keeps
    that attempt's file, cut short; the run is retried and ends on another node, which ships
    the whole log. Readers on the first node (`pipeline logs`, the API) took the stale file
    because it was there; once the store has a log's final version, they read that."""
    store = PostgresStore.open(postgres_url)
    try:
        store.record([RunQueued(RUN, "job", Trigger.API, NOW), StepStarted(RUN, "s", 1, NOW, REL)])
        path = tmp_path / "state" / REL
        path.parent.mkdir(parents=True)
        path.write_bytes(b"attempt 1: started\n")  # cut short: this node was lost
        store.ship_log(RUN, "s", 0, b"attempt 1: started\n")
        assert read_any(store, tmp_path / "state", REL, RUN, "s", 0, 100) == (
            b"attempt 1: started\n", False)  # nothing final yet: the file here is the best
        whole = b"attempt 2: started\nattempt 2: done\n"
        store.ship_log(RUN, "s", 0, whole, final=len(whole))  # the other node's, at its end
        store.record([StepFinished(RUN, "s", StepStatus.SUCCEEDED, NOW, attempt=1),
                      RunFinished(RUN, RunStatus.SUCCEEDED, NOW)])
        assert read_any(store, tmp_path / "state", REL, RUN, "s", 0, 100) == (whole, True)
    finally:
        store.close()
    done = subprocess.run([sys.executable, "-m", "pipeline", "logs", RUN, "--store", postgres_url,
                           "--state-dir", str(tmp_path / "state"), "--jobs-dir", str(tmp_path)],
                          capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"==> s <==\n" + whole, b"")


async def test_a_step_that_ends_while_its_log_is_shipped_still_ships_its_end(
        tmp_path: Path) -> None:
    """Found by the cluster harness: the step ended (its StepFinished seen) while a live
    shipment of its log was under way in a worker thread; once that shipment returned, the
    log was dropped as if its end had been shipped, and the store never had it whole."""
    store, _, path = setup(tmp_path)
    ending: list[StepFinished] = []

    async def racing(fn, *args):  # type: ignore[no-untyped-def]
        result = fn(*args)  # the live shipment, in its thread...
        if ending:
            shipper.observe(ending.pop())  # ...while the step ends
        return result

    shipper = LogShipper(store, tmp_path / "state", offload=racing)
    shipper.observe(StepStarted(RUN, "s", 1, NOW, REL))
    path.write_bytes(b"started\n")
    ending.append(StepFinished(RUN, "s", StepStatus.CANCELLED, NOW, attempt=1))
    await shipper.ship()
    path.write_bytes(b"started\n[pipeline] stopped\n")  # what the engine wrote at its end
    await shipper.ship()
    whole = b"started\n[pipeline] stopped\n"
    assert store.shipped_log(RUN, "s") == (whole, len(whole))

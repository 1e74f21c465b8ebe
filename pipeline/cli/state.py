"""The state as the commands read it: the store opened (after recovery), runs by id, and
what a live daemon says it loaded."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pipeline.cli import Settings, configure_logging
from pipeline.cli.text import check_run_id, zone_of
from pipeline.errors import NotFound
from pipeline.model import utc_now
from pipeline.recovery import recover
from pipeline.runrecords import RunRecord
from pipeline.store import Store, open_store
from pipeline.store.sqlite import DB_FILE

if TYPE_CHECKING:
    from pipeline.jobset import Loaded


def has_state(settings: Settings) -> bool:
    """Whether anything has run with this state directory (it has a database), or a shared
    store is named (it may well hold runs)."""
    return settings.store_url is not None or (settings.state_dir / DB_FILE).is_file()


@contextmanager
def open_state(settings: Settings, *, create: bool = False) -> Iterator[Store]:
    """The state store, after taking back the runs of dead nodes (CONTRACT §8).

    Only with ``create`` is a missing state directory made; otherwise ``NotFound`` ("no runs
    yet") is raised, so that looking (``list``, ``runs``, ``show``, ``logs``) never leaves a
    ``.pipeline`` behind in whatever folder it was typed in. What recovery repairs is said on
    stderr.
    """
    configure_logging(fmt="cli")
    if not create and not has_state(settings):
        raise NotFound(f"no runs yet: there is no state directory {settings.state_dir}")
    store = open_store(settings.state_dir, settings.store_url)
    try:
        recover(store, settings.state_dir, utc_now())
        yield store
    finally:
        store.close()


def get_run(store: Store, run_id: str) -> RunRecord:
    record = store.run(check_run_id(run_id))
    if record is None:
        raise NotFound(f"no run {run_id!r}")
    return record


def daemon_info(settings: Settings) -> dict[str, Any] | None:
    """What the live daemon on the state directory says it loaded; None if none runs."""
    # The daemon's module brings the whole daemon: only `list` and `runs` ask.
    from pipeline.daemon import read_daemon_file

    return read_daemon_file(settings.state_dir)


def known_names(loaded: Loaded | None, daemon: Mapping[str, Any] | None) -> set[str]:
    """Job names that a file claims, valid or not, or that the daemon runs."""
    names = set(loaded.files.values()) if loaded is not None else set()
    return names | set((daemon or {}).get("jobs", {}))


def job_zones(loaded: Loaded | None, daemon: Mapping[str, Any] | None) -> dict[str, tzinfo]:
    """Each job's zone: from its file, else from the version the daemon runs."""
    zones: dict[str, tzinfo] = {}
    for name, info in (daemon or {}).get("jobs", {}).items():
        try:
            zones[name] = ZoneInfo(str(info["timezone"]))
        except (KeyError, ValueError):  # an older daemon.json, or no schedule
            pass
    for name, job in (loaded.jobs.items() if loaded is not None else ()):
        zone = zone_of(job)
        if zone is not None:
            zones[name] = zone
    return zones

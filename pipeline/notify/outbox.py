"""The deliveries a notifier has pending (one notice on its way to one target), and how they
are kept across restarts: saved as plain JSON data, secrets as references, never values."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from pipeline.model import NotifyEvent, NotifyTarget, Secret, TargetKind, freeze
from pipeline.notify.notice import Notice

Offload = Callable[..., Awaitable[Any]]


def _target_dict(target: NotifyTarget) -> dict[str, Any]:
    return {"kind": str(target.kind), "when": sorted(map(str, target.when)),
            "index": target.index, "url": target.url, "headers": dict(target.headers),
            "to": list(target.to), "subject": target.subject, "channel": target.channel,
            "username": target.username, "command": list(target.command),
            "cooldown": target.cooldown, "timeout": target.timeout}


def _target_from(data: Mapping[str, Any]) -> NotifyTarget:
    return NotifyTarget(
        kind=TargetKind(data["kind"]), when=frozenset(NotifyEvent(e) for e in data["when"]),
        index=int(data["index"]), url=data.get("url"),
        headers=freeze(dict(data.get("headers") or {})), to=tuple(data.get("to") or ()),
        subject=data.get("subject"), channel=data.get("channel"),
        username=data.get("username"), command=tuple(data.get("command") or ()),
        cooldown=float(data.get("cooldown", 0)), timeout=float(data["timeout"]))


@dataclass
class Delivery:
    """One notice on its way to one target. ``secrets`` are references (where each value is
    read), never values: this is what ``save`` stores."""

    id: str
    notice: Notice
    target: NotifyTarget
    secrets: Mapping[str, Secret]
    tries: int = 0  # tries that failed so far

    @property
    def lane(self) -> tuple[str, str]:
        return (self.notice.job, self.target.label)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "notice": self.notice.as_dict(),
                "target": _target_dict(self.target), "tries": self.tries,
                "secrets": {name: {"env": s.env, "file": s.file}
                            for name, s in self.secrets.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(str(data["id"]), Notice.from_dict(data["notice"]),
                   _target_from(data["target"]),
                   {name: Secret(name, ref.get("env"), ref.get("file"))
                    for name, ref in (data.get("secrets") or {}).items()},
                   int(data.get("tries", 0)))


@dataclass(frozen=True)
class JsonFile:
    """``save`` and ``load`` for a ``Notifier`` on one JSON file, replaced atomically."""

    path: Path

    def save(self, pending: Sequence[Mapping[str, Any]]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(list(pending), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def load(self) -> list[dict[str, Any]]:
        try:
            found = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return found if isinstance(found, list) else []



class Outbox:
    """The deliveries pending, by id in order of arrival, kept saved: handed to ``save``
    after every change and read back by ``load``; ``adopt`` hands over what nodes that are
    gone left pending (blocking functions, called through ``offload``); see ``Notifier``."""

    def __init__(self, *, save: Callable[[list[dict[str, Any]]], object] | None,
                 load: Callable[[], Sequence[Mapping[str, Any]]] | None,
                 offload: Offload,
                 adopt: Callable[[], Sequence[Mapping[str, Any]]] | None = None) -> None:
        self._save = save
        self._load = load
        self._adopt = adopt
        self._offload = offload
        self.pending: dict[str, Delivery] = {}  # by id, in order of arrival
        self._dirty = trio.Event()

    def add(self, delivery: Delivery) -> None:
        self.pending[delivery.id] = delivery
        self._dirty.set()

    def remove(self, delivery: Delivery) -> None:
        del self.pending[delivery.id]
        self._dirty.set()

    def changed(self) -> None:
        """A pending delivery changed (its tries): save it again."""
        self._dirty.set()

    async def load(self) -> list[Delivery]:
        """What was saved last; a delivery that cannot be read is dropped (and logged)."""
        if self._load is None:
            return []
        saved = await self._offload(self._load)
        if saved:
            logger.info("{} notification(s) pending from before the restart", len(saved))
        return _deliveries(saved)

    async def adopted(self) -> list[Delivery]:
        """What nodes no longer running left pending, now this node's to send (a daemon
        restarted under another node name, a node lost for good)."""
        if self._adopt is None:
            return []
        saved = await self._offload(self._adopt)
        if saved:
            logger.info("{} notification(s) left pending by nodes no longer running are "
                        "sent from here", len(saved))
        return _deliveries(saved)

    async def keep_saved(self) -> None:
        """Hand the pending deliveries to ``save`` after every change (changes that come
        while one is being saved are saved together next)."""
        if self._save is None:
            return
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await self.save_now()
        finally:
            if self._dirty.is_set():
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self.save_now()

    async def save_now(self) -> None:
        """Hand what is pending to ``save`` (on a failure: logged, marked to try again)."""
        assert self._save is not None
        snapshot = [d.as_dict() for d in self.pending.values()]
        try:
            await self._offload(self._save, snapshot)
        except Exception as exc:
            logger.error("cannot save the pending notifications (trying again): {}", exc)
            self._dirty.set()
            await trio.sleep(1.0)


def _deliveries(saved: Sequence[Mapping[str, Any]]) -> list[Delivery]:
    found = []
    for entry in saved:
        try:
            found.append(Delivery.from_dict(entry))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            logger.warning("a saved notification cannot be read and is dropped: {}", exc)
    return found

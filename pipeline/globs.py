"""The ``file:`` globs of event schedules: what they mean, which files they match now.

A glob is an absolute path whose components may hold the shell's wildcards: ``*`` and ``?``
(never across a ``/``), ``[abc]`` and ``[!abc]``, and ``**`` as a whole component for any
number of folders (none included). As in the shell, a wildcard does not match a name that
starts with a dot unless the pattern's component does too, and ``**`` does not go into hidden
folders: editors' and uploaders' temporary files (``.report.csv.swp``, ``.~lock``) stay out.

The leading components without wildcards are the glob's ``root``: the folder to watch. Only
regular files match (a symlink to one counts); ``scan`` lists them by walking from the root,
going into a folder only where the pattern can still match, and into each real folder once
(a symlink loop ends there).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

_MAGIC = re.compile(r"[*?\[]")


# One component of a glob below its root: its text and its compiled form (None for **).
_Part = tuple[str, "re.Pattern[str] | None"]


@dataclass(frozen=True)
class Glob:
    """A parsed glob: ``root`` (a folder path without wildcards) and the ``parts`` below it."""

    pattern: str
    root: str
    parts: tuple[str, ...]
    _compiled: tuple[_Part, ...] = field(repr=False, compare=False, default=())

    @property
    def deep(self) -> bool:
        """Whether files can match below the root's direct children (a watch must recurse)."""
        return len(self.parts) > 1 or "**" in self.parts

    def matches(self, path: str) -> bool:
        """Whether ``path`` (absolute, normalised) is one this glob names."""
        relative = _below(path, self.root)
        if not relative:
            return False
        return _match(self._compiled, tuple(relative.split(os.sep)))

    def scan(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every regular file that matches now, once each, with its ``stat``. Folders that
        cannot be read are passed over (the checks warn about an unreadable root)."""
        found: set[str] = set()
        for path, info in _walk(self.root, self._compiled, set()):
            if path not in found:
                found.add(path)
                yield path, info


def parse(pattern: str) -> Glob:
    """``pattern`` (absolute) as a ``Glob``; ``ValueError`` with a message if it is not one."""
    if not pattern.strip():
        raise ValueError("the glob is empty")
    if "\0" in pattern:
        raise ValueError("the glob holds a NUL character")
    if not os.path.isabs(pattern):
        raise ValueError(f"{pattern!r} is not an absolute path")
    if pattern.endswith(os.sep) or pattern.endswith(os.sep + "."):
        raise ValueError(f"{pattern!r} names a folder, not files; add a file pattern such as "
                         f"{pattern.rstrip(os.sep)}/*")
    components = [c for c in pattern.split(os.sep) if c]
    if not components:
        raise ValueError(f"{pattern!r} names no file")
    for component in components:
        if "**" in component and component != "**":
            raise ValueError(f"{component!r}: ** must be a whole path component (write "
                             f"**/{component.replace('**', '*')} for any depth)")
        if _unclosed(component):
            raise ValueError(f"{component!r} has a [ without its closing ]")
    if components[-1] == "**":
        raise ValueError(f"{pattern!r} ends with **, which matches folders; add a file "
                         "pattern such as **/*")
    fixed = 0
    while fixed < len(components) - 1 and not _MAGIC.search(components[fixed]):
        fixed += 1
    root = os.sep + os.sep.join(components[:fixed])
    parts = tuple(components[fixed:])
    compiled = tuple((part, None if part == "**" else re.compile(fnmatch.translate(part)))
                     for part in parts)
    return Glob(pattern, root, parts, compiled)


def _unclosed(component: str) -> bool:
    """Whether a ``[`` opens a set that never closes (fnmatch would take it literally, which
    is never what was meant)."""
    at = component.find("[")
    while at != -1:
        end = at + 1
        if end < len(component) and component[end] == "!":
            end += 1
        if end < len(component) and component[end] == "]":
            end += 1
        end = component.find("]", end)
        if end == -1:
            return True
        at = component.find("[", end + 1)
    return False


def _below(path: str, root: str) -> str | None:
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path[len(prefix):] if path.startswith(prefix) else None


def _name_matches(part: _Part, name: str) -> bool:
    text, compiled = part
    if name.startswith(".") and not text.startswith("."):
        return False
    return compiled is not None and compiled.match(name) is not None


def _match(parts: tuple[_Part, ...], names: tuple[str, ...]) -> bool:
    if not parts:
        return not names
    if parts[0][1] is None:  # **: no folder, or one more (not a hidden one) and ** again
        return _match(parts[1:], names) or (
            len(names) > 1 and not names[0].startswith(".") and _match(parts, names[1:]))
    return bool(names) and _name_matches(parts[0], names[0]) and _match(parts[1:], names[1:])


def _walk(folder: str, parts: tuple[_Part, ...],
          seen: set[tuple[int, int, int]]) -> Iterator[tuple[str, os.stat_result]]:
    """The files under ``folder`` whose path below it matches ``parts``."""
    try:
        info = os.stat(folder)
        # A folder is walked once for each rest of the pattern it is reached with (``**/a/*``
        # reaches a/ as `a/*` and as `**/a/*`), and never twice with the same rest.
        key = (info.st_dev, info.st_ino, len(parts))
        if key in seen:
            return
        seen.add(key)
        with os.scandir(folder) as entries:
            listed = list(entries)
    except OSError:
        return
    for entry in listed:
        yield from _step(entry, parts, seen)


def _step(entry: os.DirEntry[str], parts: tuple[_Part, ...],
          seen: set[tuple[int, int, int]]) -> Iterator[tuple[str, os.stat_result]]:
    """``entry`` (in a folder being walked) against what is left of the pattern there."""
    head, rest = parts[0], parts[1:]
    if head[1] is None:  # **
        if rest:
            yield from _step(entry, rest, seen)  # standing for no folder
        if not entry.name.startswith(".") and _is_dir(entry):
            yield from _walk(entry.path, parts, seen)  # standing for this one, and more
        return
    if not _name_matches(head, entry.name):
        return
    if rest:
        if _is_dir(entry):
            yield from _walk(entry.path, rest, seen)
        return
    try:
        info = os.stat(entry.path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode):
        yield entry.path, info


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; _walk visits each real folder once
    except OSError:
        return False

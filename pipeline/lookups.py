"""What a job's expressions can look up, where: the scope rules of ``pipeline.checks``.

An expression reads its run's context (``engine``'s ``_Run.context``): ``params``, ``env``,
``secrets``, ``steps``, ``run``, ``job``, in a ``for_each`` step ``item``, and the functions
``success()``, ``failure()``, ``always()``, ``cancelled()`` (plus Jinja's ``range`` and
``dict``). ``Names.judge`` says why one lookup (``expr.Reference``) can never succeed where it
is written, or None:

* ``steps.<id>``: the step must exist, and its values must be able to be there: a step sees
  the steps it needs, directly or through others, in its own list; a hook sees every step of
  the DAG; ``finally`` also sees ``on_success`` and ``on_failure`` (they ran before it); the
  job's ``outputs:`` see the DAG (they are evaluated when it ends), its ``env:`` nothing (it is
  evaluated first). After the id: ``status`` or ``outputs`` (``items`` for a ``for_each`` step).
* ``params.<name>``, ``secrets.<NAME>``: declared by the job. ``env.<NAME>``: set by the job's
  ``env:`` (and, for the step's commands, the step's own); the process environment is not in
  the context. ``run.<key>``, ``job.<key>``: the keys CONTRACT §2 names.
* ``item``: only in the commands, ``with``, ``env`` and ``cwd`` of a ``for_each`` step (not
  its ``if:``, evaluated once before the items, nor its ``for_each:`` expression).
* a call: one of the functions; a filter (``fromjson``) is not called but piped.
* in ``notify:`` (reader ``"notify"``, rendered when a notification is sent): ``secrets``,
  ``params``, ``job`` and ``run`` only (``run.status`` too): no step runs there, and no env
  is set.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, NamedTuple

from pipeline import dag, expr
from pipeline.errors import did_you_mean

# What every expression can read: the names engine's run context holds (CONTRACT §2).
CONTEXT = ("params", "env", "secrets", "steps", "run", "job")
FUNCTIONS = ("success", "failure", "always", "cancelled")
RUN_KEYS = ("id", "fire_time", "trigger", "event", "upstream")
JOB_KEYS = ("name",)
STEP_KEYS = ("status", "outputs")  # a for_each step also has "items"
STEP_LISTS = ("steps", *dag.HOOK_LISTS)

NO_ITEM = "item is only defined in a step with for_each"


class Scope(NamedTuple):  # a NamedTuple: one or two are made for every step of every file
    """What an expression can read where it is written.

    ``reader``: whose expression it is, for which steps' values can be there: a step (its list
    and id), ``"env"`` (the job's env, rendered before any step) or ``"outputs"`` (the job's
    outputs, rendered when the steps end), ``"notify"`` (a notification, rendered when it is
    sent); None: do not judge steps by it. ``item``: None if
    ``item`` is defined, else why not. ``env``: the names ``env.`` holds (None: not judged),
    ``env_words`` says what that is.
    """

    reader: tuple[str, str] | str | None
    item: str | None = None
    env: frozenset[str] | None = None
    env_words: str = ""


def _keys(value: Any) -> frozenset[str] | None:
    """The keys of a mapping the job declares; empty if it declares none; None if it is not a
    mapping (the schema says so, and lookups in it are not judged)."""
    if value is None:
        return frozenset()
    return frozenset(value) if isinstance(value, dict) else None


class Names:
    """What a job's expressions can look up: its params, secrets, env and steps."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.params = _keys(data.get("params"))
        self.secrets = _keys(data.get("secrets"))
        self.env = _keys(data.get("env"))
        self.needs: dict[str, list[str]] = {}  # step id -> the ids it needs
        self.home: dict[str, str] = {}  # step id -> the list it is in (its first one)
        self.for_each: set[str] = set()
        self.declarer = "the job"  # who declares params and secrets, for messages
        for list_name in STEP_LISTS:
            items = data.get(list_name)
            for step in items if isinstance(items, list) else ():
                sid = step.get("id") if isinstance(step, dict) else None
                if not isinstance(sid, str) or sid in self.home:
                    continue
                self.home[sid] = list_name
                wanted = step.get("needs", ())
                wanted = [wanted] if isinstance(wanted, str) else wanted
                self.needs[sid] = [n for n in wanted if isinstance(n, str)] \
                    if isinstance(wanted, list) else []
                if "for_each" in step:
                    self.for_each.add(sid)
        self._ancestors: dict[str, set[str]] = {}

    def ancestors(self, sid: str) -> set[str]:
        """The steps of ``sid``'s own list that it needs, directly or through others."""
        found = self._ancestors.get(sid)
        if found is None:
            mine = self.home[sid]
            found = set()
            todo = list(self.needs.get(sid, ()))
            while todo:
                need = todo.pop()
                if need not in found and self.home.get(need) == mine:
                    found.add(need)
                    todo.extend(self.needs.get(need, ()))
            self._ancestors[sid] = found
        return found

    def unseen(self, target: str, reader: tuple[str, str] | str) -> str | None:
        """Why step ``target``'s values are never there where ``reader`` reads them, or None
        if they can be. Hooks run after the DAG (``finally`` last); the job's env before it;
        its outputs when the DAG ends."""
        where = self.home[target]
        if reader == "env":
            return "the job's env: is evaluated before any step runs"
        if reader == "outputs":
            return None if where == "steps" else (
                f"{target!r} is a step of {where}, and outputs: are evaluated when the steps "
                "end, before the hooks")
        assert isinstance(reader, tuple)
        mine, sid = reader
        if target == sid:
            return f"that is step {sid!r} itself, whose values are not there while it runs"
        if where == mine:
            if target in self.ancestors(sid):
                return None
            return (f"step {sid!r} does not need {target!r} (directly or through other "
                    f"steps), so its values are never there when {sid!r} runs; add "
                    f"{target!r} to its needs")
        if where == "steps" or mine == "finally":
            return None  # hooks read the DAG; finally runs after on_success/on_failure
        if mine == "steps":
            return f"{target!r} is a step of {where}, which runs after the steps"
        if where == "finally":
            return f"{target!r} is a step of finally, which runs after {mine}"
        return f"{target!r} is a step of {where}; {mine} and {where} never both run"

    def judge(self, ref: expr.Reference, scope: Scope) -> str | None:
        """Why the lookup ``ref`` cannot succeed in ``scope``, or None if it can."""
        path = ref.path
        root = str(path[0])
        if ref.called:
            return _call(root)
        if root in FUNCTIONS or root in expr.GLOBALS:
            return None
        if scope.reader == "notify" and root in ("steps", "env"):
            return (f"{root} is not there when a notification is sent: notify: reads "
                    "secrets, params, job and run")
        if root == "item":
            return scope.item
        if root not in CONTEXT:
            names = [*CONTEXT, *(["item"] if scope.item is None else [])]
            return (f"unknown name {root!r}{did_you_mean(root, names)}; an expression "
                    f"reads {', '.join(names)}")
        if len(path) < 2 or not isinstance(path[1], str):
            return None
        key = path[1]
        shown = f"{root}.{key}" if key.isidentifier() else _shown(path[:2])
        if root == "steps":
            return self.step_lookup(path, key, shown, scope)
        if root in ("params", "secrets"):
            declared = self.params if root == "params" else self.secrets
            what = "parameter" if root == "params" else "secret"
            if declared is None or key in declared:
                return None
            return f"{shown}: there is no {what} {key!r}" + (
                did_you_mean(key, declared) or (
                    f" ({root}: {_listed(declared)})" if declared
                    else f" ({self.declarer} declares no {root})"))
        if root == "env":
            if scope.env is None or key in scope.env:
                return None
            return (f"{shown} is not set: env holds {scope.env_words} "
                    f"({_listed(scope.env) or 'none'}){did_you_mean(key, scope.env)}; a "
                    f"script reads other variables as ${key}")
        known = (RUN_KEYS if root == "run" else JOB_KEYS) + (
            ("status",) if root == "run" and scope.reader == "notify" else ())
        if key in known:
            return None
        return f"{shown}: {root} has {', '.join(known)}{did_you_mean(key, known)}"


    def step_lookup(self, path: tuple[str | int, ...], key: str, shown: str,
                    scope: Scope) -> str | None:
        """Why ``steps.KEY...`` cannot succeed in ``scope``: no such step, one not there yet
        (``unseen``), or a key a step does not have; None if it can."""
        if key not in self.home:
            return f"{shown}: there is no step {key!r} in this job" + (
                did_you_mean(key, self.home) or f" (steps: {_listed(self.home)})")
        reason = None if scope.reader is None else self.unseen(key, scope.reader)
        if reason:
            return f"{shown}: {reason}"
        keys = (*STEP_KEYS, "items") if key in self.for_each else STEP_KEYS
        if len(path) > 2 and isinstance(path[2], str) and path[2] not in keys:
            return (f"{_shown(path[:3])}: a step has {' and '.join(keys)}"
                    f"{did_you_mean(path[2], keys)}")
        return None


def _call(root: str) -> str | None:
    """Why calling ``root()`` cannot succeed, or None if it may."""
    if root in FUNCTIONS or root in expr.GLOBALS or root in CONTEXT or root == "item":
        return None  # calling a value that is no function: the run says so
    if root in expr.FILTERS:
        return f"{root} is a filter, not a function: write `value | {root}`"
    close = difflib.get_close_matches(root, [*FUNCTIONS, *expr.GLOBALS], n=1)
    hint = f" (did you mean {close[0]}()?)" if close else ""
    return (f"unknown function {root}(){hint}; the functions are "
            f"{', '.join(f + '()' for f in FUNCTIONS)}")


def _shown(path: tuple[str | int, ...]) -> str:
    """``steps.a.outputs``, ``steps['my-step']``: a lookup as it can be written."""
    text = str(path[0])
    for key in path[1:]:
        text += f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"
    return text


def _listed(names: Iterable[str]) -> str:
    found = sorted(names)
    return ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")

"""The child process of ``uses: python``: import a function, call it, write its result as JSON.

Run as ``python -P _child.py CALL_FILE RESULT_FILE`` — by path and with ``-P``, so neither this
directory (which holds a module named ``http``) nor the ``pipeline`` package is importable by
accident, and start-up imports nothing but the standard library.

CALL_FILE holds ``{"callable": "pkg.mod:func", "args": [...], "kwargs": {...}, "path": [...]}``;
``path`` entries go in front of ``sys.path``. The outcome goes to RESULT_FILE, written whole
(through a rename) so the parent never reads half of one:

    {"ok": true, "value": <the returned mapping or null>}
    {"ok": false, "error": "<what went wrong, one line>"}

The function's own output (and the traceback of an exception it raises) goes to stdout and
stderr, which the parent copies to the step log. No result file and a non-zero status means the
process ended on its own (``os._exit``) or was killed.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping

# Only what every call needs is imported up front: start-up is the runner's whole overhead
# (``inspect`` alone would cost 20 ms). ``asyncio`` and ``traceback`` come when needed.


def load(spec: str) -> Callable[..., object]:
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise LookupError(f"callable {spec!r} is not \"package.module:function\"")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:
        print_exception()
        raise LookupError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LookupError(f"{module_name} has no attribute {qualname}") from None
    if not callable(target):
        raise LookupError(f"{spec} is not callable (it is {type(target).__name__})")
    return target


def call(function: Callable[..., object], args: list[object],
         kwargs: dict[str, object]) -> object:
    result = function(*args, **kwargs)
    if isinstance(result, Awaitable):
        # A user's async function, in this child process that runs nothing else: asyncio is
        # what such functions are written for (httpx, aiohttp...), and no trio loop is here.
        import asyncio

        async def wait(awaitable: Awaitable[object]) -> object:
            return await awaitable

        result = asyncio.run(wait(result))
    return result


def print_exception() -> None:
    """The traceback of the exception being handled, to stderr (the step log)."""
    import traceback

    traceback.print_exc()


def outcome(request: Mapping[str, object]) -> dict[str, object]:
    spec, args, kwargs = request["callable"], request.get("args"), request.get("kwargs")
    assert isinstance(spec, str) and isinstance(args, list) and isinstance(kwargs, dict)
    try:
        function = load(spec)
    except LookupError as exc:
        return {"ok": False, "error": str(exc)}
    try:
        value = call(function, args, kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they end the call
        print_exception()
        message = str(exc)
        return {"ok": False,
                "error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__}
    if value is None:
        return {"ok": True, "value": None}
    if not isinstance(value, Mapping):
        return {"ok": False, "error": f"the function returned {type(value).__name__}, "
                                      "expected a mapping or None"}
    try:
        plain = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        return {"ok": False, "error": f"the function returned a value that is not JSON: {exc}"}
    return {"ok": True, "value": plain}


def main(argv: list[str]) -> int:
    call_file, result_file = argv[1], argv[2]
    with open(call_file, encoding="utf-8") as f:
        request = json.load(f)
    for entry in reversed(request["path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    result = outcome(request)
    sys.stdout.flush()
    sys.stderr.flush()
    partial = result_file + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(result, f, allow_nan=False)
    os.replace(partial, result_file)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

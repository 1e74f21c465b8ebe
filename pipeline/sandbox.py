"""The expression language: jinja2's immutable sandbox, with the rules and guards of CONTRACT §2.

An expression is evaluated in jinja2's immutable sandbox: no attribute starting with ``_`` or
internal to Python (``''.__class__.__mro__``), no method that mutates a list or dict, and only
the callables the context brings (``success()``, ``failure()``, ``always()``,
``cancelled()``) plus ``range`` and ``dict``.

Rules of the language, beyond Jinja's:

* ``a.b`` on a mapping means the key ``b``, never a method of the mapping, so an output called
  ``items`` or ``keys`` is reachable.
* A missing name or key is an error when its value is used (``StrictUndefined``), raised as
  ``Missing`` with what was missing and where, so the message can name the path. Lookups
  through a missing value chain, so ``steps.x.outputs.v | default('none')`` works before ``x``
  has run.
* Filters added: ``raw`` (see ``expr.render``) and ``fromjson``; ``tojson`` gives plain
  compact JSON.

Resource guards: ``*`` refuses to build a string or list over 1,000,000 items, ``**`` a number
over 100,000 bits, ``%`` a format with a width or precision of 7 digits, a string method
(``center``, ``zfill``...) a number argument over 1,000,000, ``range`` more than 100,000 items.
They stop the cheap mistakes; they are not a resource sandbox (``replace``, ``str.format`` or
the ``indent`` filter can still grow a string). Expressions come from job files, whose authors
can run any command anyway; what matters is that a typo cannot take the daemon down.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2.exceptions import TemplateRuntimeError, UndefinedError
from jinja2.runtime import StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

MAX_ITEMS = 1_000_000  # characters of a string, items of a list, built by `*`
MAX_POWER_BITS = 100_000
_WIDE_FORMAT = re.compile(r"%[-#0 +]*(?:\*|\d{7,})|%[-#0 +]*\d*\.(?:\*|\d{7,})")


class Missing(UndefinedError):
    """An undefined value was used; ``name`` is what was missing, ``obj`` where it was looked up."""

    def __init__(self, message: str, *, name: Any, obj: Any) -> None:
        super().__init__(message)
        self.name = name
        self.obj = obj


class _Undefined(StrictUndefined):
    """StrictUndefined whose error remembers what was missing, so the message can name its path."""

    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None,
                 exc: type[TemplateRuntimeError] = UndefinedError) -> None:
        super().__init__(hint, obj, name, exc)
        if exc is UndefinedError:
            # Jinja raises ``self._undefined_exception(message)``: bind the name and the object
            # into it. (The sandbox's own undefineds carry SecurityError and keep it.)
            self._undefined_exception = functools.partial(  # type: ignore[assignment]
                Missing, name=name, obj=obj)


def _multiply(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        if (isinstance(seq, str | bytes | list | tuple) and isinstance(times, int)
                and len(seq) * times > MAX_ITEMS):
            raise OverflowError(f"refusing to repeat a {type(seq).__name__} of {len(seq)} "
                                f"items {times} times (limit {MAX_ITEMS:,} items)")
    return left * right


def _power(base: Any, exponent: Any) -> Any:
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0
            and abs(base) > 1 and base.bit_length() * exponent > MAX_POWER_BITS):
        raise OverflowError(f"refusing to compute {base} ** {exponent}: the result would have "
                            f"over {MAX_POWER_BITS:,} bits")
    return base**exponent


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str) and _WIDE_FORMAT.search(left):
        raise OverflowError("refusing a %-format with a width or precision of millions")
    return left % right


def _fromjson(value: str) -> Any:
    return json.loads(value)


def _tojson(value: Any, indent: int | None = None) -> str:
    separators = (",", ": ") if indent is not None else (",", ":")
    return json.dumps(native(value), ensure_ascii=False, indent=indent, separators=separators,
                      default=str)


def _raw(value: Any) -> Any:
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=_Undefined, autoescape=False)
        self.binop_table.update({"*": _multiply, "**": _power, "%": _modulo})
        for name in ("lipsum", "cycler", "joiner", "namespace"):
            self.globals.pop(name, None)
        self.filters.update({"raw": _raw, "fromjson": _fromjson, "tojson": _tojson})

    # Positional-only by their double underscores, as in Jinja: the call's own keyword
    # arguments may be called ``self`` or ``obj``.
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # str.center, ljust, zfill, expandtabs...: a width of millions is a mistake.
        if isinstance(getattr(__obj, "__self__", None), str) and any(
                isinstance(a, int) and a > MAX_ITEMS for a in (*args, *kwargs.values())):
            raise OverflowError(f"refusing a string method argument over {MAX_ITEMS:,}")
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Undefined):
            return obj  # keep the first missing name: it is the one the message must show
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Undefined):
            return obj
        if isinstance(obj, Mapping):
            try:
                return obj[argument]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)


ENV = _Sandbox()


def native(value: Any) -> Any:
    """Plain JSON-like data: mappings to dicts, sequences and iterators to lists.

    Raises the undefined's error if one is found inside (``[steps.nope]``).
    """
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, str):
        return str(value)  # Markup and other subclasses become plain text
    if isinstance(value, Mapping):
        return {k: native(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, Iterable):
        return [native(v) for v in value]
    return value

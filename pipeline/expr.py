"""``${{ expression }}``: checking, evaluating and substituting expressions (CONTRACT §2).

An expression is a Jinja expression (``params.target == 'prod' and steps.build.status ==
'succeeded'``, ``steps['my-step'].outputs.version``, ``params.name | lower``), evaluated in
jinja2's immutable sandbox: no attribute starting with ``_`` or internal to Python
(``''.__class__.__mro__``), no method that mutates a list or dict, and only the callables the
context brings (``success()``, ``failure()``, ``always()``, ``cancelled()``) plus ``range`` and
``dict``.

Rules of the language, beyond Jinja's:

* ``a.b`` on a mapping means the key ``b``, never a method of the mapping, so an output called
  ``items`` or ``keys`` is reachable.
* A missing name or key is an error when its value is used (``StrictUndefined``), naming the
  path (``steps.biuld is undefined (did you mean steps.build?)``). Lookups through a missing
  value chain, so ``steps.x.outputs.v | default('none')`` works before ``x`` has run.
* Filters added: ``raw`` (see ``render``) and ``fromjson``; ``tojson`` gives plain compact
  JSON.
* A literal ``${{`` is written ``${{ '${{' }}``; there is no escape syntax.

Resource guards: ``*`` refuses to build a string or list over 1,000,000 items, ``**`` a number
over 100,000 bits, ``%`` a format with a width or precision of 7 digits, a string method
(``center``, ``zfill``...) a number argument over 1,000,000, ``range`` more than 100,000 items.
They stop the cheap mistakes; they are not a resource sandbox (``replace``, ``str.format`` or
the ``indent`` filter can still grow a string). Expressions come from job files, whose authors
can run any command anyway; what matters is that a typo cannot take the daemon down.

Every failure, of parsing or of evaluation, raises ``ExpressionError`` and nothing else.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateRuntimeError, UndefinedError
from jinja2.lexer import describe_token
from jinja2.parser import Parser
from jinja2.runtime import StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from pipeline.errors import ExpressionError

__all__ = ["Reference", "check_expression", "check_template", "evaluate", "references",
           "render", "render_value", "shell_quote"]

shell_quote = shlex.quote

OPEN, CLOSE = "${{", "}}"
MAX_ITEMS = 1_000_000  # characters of a string, items of a list, built by `*`
MAX_POWER_BITS = 100_000
_WIDE_FORMAT = re.compile(r"%[-#0 +]*(?:\*|\d{7,})|%[-#0 +]*\d*\.(?:\*|\d{7,})")


class _Missing(UndefinedError):
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
                _Missing, name=name, obj=obj)


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
    return json.dumps(_native(value), ensure_ascii=False, indent=indent, separators=separators,
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


_ENV = _Sandbox()


# -- parsing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Expr:
    """One ``${{ }}`` of a template: its source (stripped), whether it ends with ``| raw``,
    and where the source starts in the template (for messages that point into it)."""

    source: str
    raw: bool
    start: int = 0


def _show(source: str) -> str:
    source = " ".join(source.split())
    return source if len(source) <= 120 else source[:117] + "..."


def _nodes(tree: nodes.Node, kinds: tuple[type[nodes.Node], ...]) -> Iterator[Any]:
    """``tree`` itself, then its descendants, that are of one of ``kinds``."""
    if isinstance(tree, kinds):
        yield tree
    yield from tree.find_all(kinds)


def _problem_in(tree: nodes.Expr) -> str | None:
    for node in _nodes(tree, (nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Filter) and node.name not in _ENV.filters:
            return f"unknown filter {node.name!r}"
        if isinstance(node, nodes.Test) and node.name not in _ENV.tests:
            return f"unknown test {node.name!r}"
    return None


@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> nodes.Expr | str:
    """The expression's tree, or why it does not parse (cached: validation parses every string)."""
    if not source.strip():
        return "empty expression"
    try:
        parser = Parser(_ENV, source, state="variable")
        tree = parser.parse_expression()
        if not parser.stream.eos:
            return f"unexpected {describe_token(parser.stream.current)!r}"
    except TemplateSyntaxError as exc:
        return (exc.message or "syntax error").replace("end of template", "end of expression")
    except RecursionError:
        return "nested too deeply"
    return _problem_in(tree) or tree


def _parse_or_raise(source: str) -> nodes.Expr:
    tree = _parse(source)
    if isinstance(tree, str):
        raise ExpressionError(f'expression "{_show(source)}" does not parse: {tree}')
    return tree


@functools.lru_cache(maxsize=1024)
def _split(text: str) -> tuple[str | _Expr, ...] | str:
    """``text`` as literal strings and expressions, or why it does not parse.

    An expression ends at the first ``}}`` after which the text between parses: a ``}}``
    inside a string literal or closing a dict literal (``${{ {'a': {'b': 1}} }}``) belongs to
    the expression. This is exactly where Jinja's own lexer ends a ``{{ }}``.
    """
    parts: list[str | _Expr] = []
    pos = 0
    while (start := text.find(OPEN, pos)) != -1:
        if start > pos:
            parts.append(text[pos:start])
        body = start + len(OPEN)
        end = text.find(CLOSE, body)
        if end == -1:
            return f'"{OPEN}" at offset {start} has no closing "{CLOSE}"'
        first_problem: str | None = None
        while end != -1:
            tree = _parse(text[body:end])
            if not isinstance(tree, str):
                break
            if first_problem is None and not text[body:end].strip():
                first_problem = f'empty "{OPEN} {CLOSE}" at offset {start}'
            elif first_problem is None:
                first_problem = f'expression "{_show(text[body:end])}" does not parse: {tree}'
            end = text.find(CLOSE, end + 1)
        else:
            assert first_problem is not None
            return first_problem
        raw = isinstance(tree, nodes.Filter) and tree.name == "raw"
        inner = text[body:end]
        parts.append(_Expr(inner.strip(), raw, body + len(inner) - len(inner.lstrip())))
        pos = end + len(CLOSE)
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def _split_or_raise(text: str) -> tuple[str | _Expr, ...]:
    parts = _split(text)
    if isinstance(parts, str):
        raise ExpressionError(parts)
    return parts


def _bare(text: str) -> str:
    """The expression of an ``if:``-style value: the text itself, or what one wrapper holds."""
    if OPEN not in text:
        return text
    parts = _split_or_raise(text)
    exprs = [p for p in parts if isinstance(p, _Expr)]
    if len(exprs) != 1 or any(isinstance(p, str) and p.strip() for p in parts):
        raise ExpressionError(f'"{_show(text)}" must be one expression, with or without a '
                              f'"{OPEN} {CLOSE}" wrapper')
    return exprs[0].source


def check_template(text: str) -> str | None:
    """None if every ``${{ }}`` in ``text`` parses, else a message naming the bad expression."""
    if OPEN not in text:
        return None
    parts = _split(text)
    return parts if isinstance(parts, str) else None


def check_expression(text: str) -> str | None:
    """None if ``text`` is one expression (an ``if:``; a ``${{ }}`` wrapper allowed) that
    parses, else a message."""
    try:
        _parse_or_raise(_bare(text))
    except ExpressionError as exc:
        return str(exc)
    return None


# -- what an expression reads (for the checks before a run) --------------------------------

# A missing value under these does not fail (StrictUndefined lets them see it):
# `steps.x.outputs.v | default('none')`, `params.p is defined`.
_GUARD_FILTERS = frozenset({"default", "d"})
_GUARD_TESTS = frozenset({"defined", "undefined"})
GLOBALS = frozenset(_ENV.globals)  # range, dict: callables every expression has
FILTERS = frozenset(_ENV.filters)  # `value | name`


@dataclass(frozen=True)
class Reference:
    """One lookup in an expression's context, as written: ``steps.build.outputs.v``, ``succes()``.

    ``path`` is the name and the constant keys after it; a computed key ends it
    (``steps[params.s].status`` is ``("steps",)``). ``offset`` is where it is written in the
    text the expression came from. ``called``: a bare name written as a call. ``guarded``:
    under ``| default(...)`` or an ``is defined`` test, where a missing value does not fail.
    """

    path: tuple[str | int, ...]
    offset: int
    called: bool = False
    guarded: bool = False


@functools.lru_cache(maxsize=4096)  # validation reads every string; files repeat them
def references(text: str, *, bare: bool = False) -> tuple[Reference, ...]:
    """Every context lookup in the ``${{ }}`` expressions of ``text`` (with ``bare``: in the one
    expression ``text`` is, as ``if:`` takes it, a wrapper allowed), in the order written.

    Nothing for a text that does not parse: ``check_template``/``check_expression`` say why.
    """
    if bare and OPEN not in text:
        sources = [(text, 0)]
    else:
        if OPEN not in text:
            return ()
        parts = _split(text)
        if isinstance(parts, str):
            return ()
        sources = [(p.source, p.start) for p in parts if isinstance(p, _Expr)]
        if bare and len(sources) != 1:
            return ()
    found: list[Reference] = []
    for source, start in sources:
        tree = _parse(source)
        if isinstance(tree, str):
            continue
        lookups: list[tuple[tuple[str | int, ...], bool, bool]] = []
        _lookups(tree, False, lookups)
        seen: dict[tuple[tuple[str | int, ...], bool], int] = {}
        for path, called, guarded in lookups:
            # The n-th lookup of a path is its n-th spelling in the source (Jinja's nodes
            # carry no columns); a spelling not found points at the expression's start.
            nth = seen[path, called] = seen.get((path, called), -1) + 1
            spelt = list(_spelling(path, called).finditer(source))
            at = spelt[min(nth, len(spelt) - 1)].start() if spelt else 0
            found.append(Reference(path, start + at, called, guarded))
    return tuple(found)


def _lookups(node: nodes.Node, guarded: bool,
             out: list[tuple[tuple[str | int, ...], bool, bool]]) -> None:
    """(path, called, guarded) of every context lookup under ``node``, appended to ``out``."""
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
        out.append(((node.node.name,), True, False))
        children: list[Any] = [*node.args, *node.kwargs, node.dyn_args, node.dyn_kwargs]
        for child in children:
            if child is not None:
                _lookups(child, False, out)
        return
    if isinstance(node, nodes.Name | nodes.Getattr | nodes.Getitem):
        chain = _chain(node, out)
        if chain is not None:
            out.append((chain[0], False, guarded))
            return
    if ((isinstance(node, nodes.Filter) and node.name in _GUARD_FILTERS)
            or (isinstance(node, nodes.Test) and node.name in _GUARD_TESTS)):
        if node.node is not None:
            _lookups(node.node, True, out)
        children = [*node.args, *node.kwargs, node.dyn_args, node.dyn_kwargs]
        for child in children:
            if child is not None:
                _lookups(child, False, out)
        return
    for child in node.iter_child_nodes():
        _lookups(child, False, out)


def _chain(node: nodes.Node, out: list[tuple[tuple[str | int, ...], bool, bool]]
           ) -> tuple[tuple[str | int, ...], bool] | None:
    """(the constant path ``node`` spells, whether a computed key cut it short), or None if
    it does not start at a name. Lookups inside computed keys go to ``out``."""
    if isinstance(node, nodes.Name):
        return (node.name,), False
    if not isinstance(node, nodes.Getattr | nodes.Getitem):
        return None
    base = _chain(node.node, out)
    if base is None:
        return None
    path, cut = base
    if isinstance(node, nodes.Getattr):
        return (path, True) if cut else ((*path, node.attr), False)
    key = node.arg.value if isinstance(node.arg, nodes.Const) else None
    if isinstance(key, str | int) and not isinstance(key, bool):
        return (path, True) if cut else ((*path, key), False)
    _lookups(node.arg, False, out)
    return path, True


@functools.lru_cache(maxsize=1024)
def _spelling(path: tuple[str | int, ...], called: bool) -> re.Pattern[str]:
    """How ``path`` can be written: ``steps.a.outputs``, ``steps['a'].outputs``, ``steps . a``."""
    pattern = rf"(?<![\w.]){re.escape(str(path[0]))}(?!\w)"
    for key in path[1:]:
        word = re.escape(str(key))
        index = word if isinstance(key, int) else f"""(?:'{word}'|"{word}")"""
        pattern += rf"\s*(?:\.\s*{word}(?![\w-])|\[\s*{index}\s*\])"
    return re.compile(pattern + (r"\s*\(" if called else ""))


# -- evaluation ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Any:
    return _ENV.compile_expression(source, undefined_to_none=False)


def _join(base: str | None, key: Any) -> str:
    if base is None:
        return str(key)
    return f"{base}.{key}" if isinstance(key, str) and key.isidentifier() else f"{base}[{key!r}]"


def _path(node: nodes.Node) -> str | None:
    """``steps.build.outputs`` for the lookup chain ``node`` spells, None if it is not one."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        base = _path(node.node)
        if base is None:
            return None
        key = node.attr if isinstance(node, nodes.Getattr) else node.arg
        if isinstance(key, nodes.Const):
            key = key.value
        if isinstance(key, str | int):
            return _join(base, key)
    return None


def _missing_message(exc: _Missing, tree: nodes.Expr, context: Mapping[str, Any]) -> str:
    name = exc.name
    path = parent = None
    for node in _nodes(tree, (nodes.Name, nodes.Getattr, nodes.Getitem)):
        if exc.obj is missing:
            found = isinstance(node, nodes.Name) and node.name == name
        elif isinstance(node, nodes.Getattr):
            found = node.attr == name
        else:
            found = (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
                     and node.arg.value == name)
        if found:
            path = _path(node)
            if isinstance(node, nodes.Getattr | nodes.Getitem):
                parent = _path(node.node)
            break
    what = path or repr(name)
    if exc.obj is missing:
        known: Iterable[Any] = [*context, *_ENV.globals]
    elif isinstance(exc.obj, Mapping):
        known = exc.obj
    elif isinstance(exc.obj, list | tuple):
        return f"{what} is undefined (the list has {len(exc.obj)} items)"
    else:
        return f"{what} is undefined (a {type(exc.obj).__name__} has no {name!r})"
    keys = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(name), keys, n=1)
    if close:
        return f"{what} is undefined (did you mean {_join(parent, close[0])}?)"
    if not keys:
        return f"{what} is undefined (there is nothing there)"
    listed = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
    return f"{what} is undefined (there is: {listed})"


def _native(value: Any) -> Any:
    """Plain JSON-like data: mappings to dicts, sequences and iterators to lists.

    Raises the undefined's error if one is found inside (``[steps.nope]``).
    """
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, str):
        return str(value)  # Markup and other subclasses become plain text
    if isinstance(value, Mapping):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, Iterable):
        return [_native(v) for v in value]
    return value


def _evaluate(source: str, context: Mapping[str, Any]) -> Any:
    tree = _parse_or_raise(source)
    try:
        value = _native(_compiled(source)(dict(context)))
    except _Missing as exc:
        raise ExpressionError(f'expression "{_show(source)}" failed: '
                              f"{_missing_message(exc, tree, context)}") from None
    except Exception as exc:  # the sandbox's SecurityError, TypeError, ZeroDivisionError...
        reason = str(exc) or type(exc).__name__
        if not isinstance(exc, UndefinedError):
            reason = f"{type(exc).__name__}: {reason}"
        raise ExpressionError(f'expression "{_show(source)}" failed: {reason}') from None
    if callable(value):
        raise ExpressionError(f'expression "{_show(source)}" gives a function: call it, '
                              f'as in "{_show(source)}()"')
    return value


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """The native value (bool, str, number, list, dict, None) of a bare expression.

    ``expression`` may be wrapped in one ``${{ }}``. Mappings and sequences in the result are
    plain dicts and lists. Raises ``ExpressionError`` for a syntax error, an undefined name, or
    any failure while evaluating.
    """
    return _evaluate(_bare(expression), context)


def text_of(value: Any) -> str:
    """A value as text, as a step sees it: a string as is, ``true``/``false``, ``""`` for
    None, numbers with ``str``, mappings and sequences (also read-only ones) as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def render(text: str, context: Mapping[str, Any], *,
           quote: Callable[[str], str] | None = None) -> str:
    """``text`` with each ``${{ expr }}`` replaced by its value as text.

    Text of a value: a string as is, a bool ``true``/``false``, None empty, a number ``str()``,
    a list or mapping compact JSON. With ``quote`` (``shlex.quote`` for ``run`` scripts) every
    value goes through it, unless its expression ends with ``| raw``. For ``run`` scripts use
    ``render_script``, which quotes each value for the quotes it stands in.
    Raises ``ExpressionError``.
    """
    if OPEN not in text:
        return text
    out = []
    for part in _split_or_raise(text):
        if isinstance(part, str):
            out.append(part)
            continue
        value = text_of(_evaluate(part.source, context))
        out.append(quote(value) if quote is not None and not part.raw else value)
    return "".join(out)


def _shell_scan(text: str, state: str, prev: str) -> tuple[str, str]:
    """Carry a POSIX shell's quoting state across ``text``: ``""`` (unquoted), ``"'"``,
    ``'"'`` or ``"#"`` (a comment, to the end of the line).

    Rough on purpose: quotes, backslashes and comments (so an apostrophe in a comment does not
    open a quote); not heredocs or ``$'...'``. ``prev`` is the character before ``text``.
    """
    i = 0
    while i < len(text):
        c = text[i]
        if state == "#":
            if c == "\n":
                state = ""
        elif state == "'":
            if c == "'":
                state = ""
        elif state == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                state = ""
        elif c == "\\":
            i += 1
        elif c in "'\"":
            state = c
        elif c == "#" and (prev == "" or prev.isspace() or prev in ";&|()"):
            state = "#"
        prev = c
        i += 1
    return state, prev


def _shell_quote(value: str, state: str) -> str:
    if state == "'":
        return value.replace("'", "'\\''")
    if state == '"':
        return re.sub(r'([\\"$`])', r"\\\1", value)
    return shlex.quote(value)


def render_script(text: str, context: Mapping[str, Any]) -> str:
    """``render`` for a ``run`` script: every value is quoted for where it stands.

    Outside quotes a value becomes one shell word (``shlex.quote``); inside double quotes its
    ``\\ " $ ` `` are escaped; inside single quotes its ``'`` is closed and reopened. So
    ``echo "Hello ${{ params.name }}"`` prints the name, and no value can inject shell syntax.
    ``| raw`` inserts a value verbatim. Inside a heredoc a value is quoted as outside quotes:
    pass such values through ``env:`` instead. Raises ``ExpressionError``.
    """
    if OPEN not in text:
        return text
    out = []
    state, prev = "", ""
    for part in _split_or_raise(text):
        if isinstance(part, str):
            out.append(part)
            state, prev = _shell_scan(part, state, prev)
            continue
        value = text_of(_evaluate(part.source, context))
        out.append(value if part.raw else _shell_quote(value, state))
        prev = "x"
    return "".join(out)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render JSON-like data (``with``, ``env``): every string rendered, the rest walked.

    A string that is exactly one ``${{ expr }}`` (whitespace around allowed) gives the
    expression's native value, so ``expect_status: ${{ params.codes }}`` can be a list.
    Mappings become dicts and sequences lists. Raises ``ExpressionError``.
    """
    if isinstance(value, str):
        if OPEN not in value:
            return value
        parts = _split_or_raise(value)
        exprs = [p for p in parts if isinstance(p, _Expr)]
        if len(exprs) == 1 and not any(isinstance(p, str) and p.strip() for p in parts):
            return _evaluate(exprs[0].source, context)
        return render(value, context)
    if isinstance(value, Mapping):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, context) for v in value]
    return value


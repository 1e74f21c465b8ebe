"""``${{ expression }}``: checking, evaluating and substituting expressions (CONTRACT §2).

An expression is a Jinja expression (``params.target == 'prod' and steps.build.status ==
'succeeded'``, ``steps['my-step'].outputs.version``, ``params.name | lower``), evaluated in
the sandbox of ``pipeline.sandbox``, whose docstring gives the rules of the language and its
resource guards. A missing name or key fails naming the path
(``steps.biuld is undefined (did you mean steps.build?)``). A literal ``${{`` is written
``${{ '${{' }}``; there is no escape syntax.

Parsing splits a template into its literal text and its ``${{ }}`` expressions; ``references``
says what each expression looks up (for the checks before a run, ``pipeline.lookups``);
``render_script`` quotes each value for where it stands in a shell script (``pipeline.shell``).

Every failure, of parsing or of evaluation, raises ``ExpressionError`` and nothing else.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import UndefinedError
from jinja2.lexer import describe_token
from jinja2.parser import Parser
from jinja2.utils import missing

from pipeline import shell
from pipeline.errors import ExpressionError
from pipeline.sandbox import ENV, Missing, native

__all__ = ["Reference", "check_expression", "check_template", "evaluate", "references",
           "render", "render_script", "render_value", "text_of"]

OPEN, CLOSE = "${{", "}}"


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
        if isinstance(node, nodes.Filter) and node.name not in ENV.filters:
            return f"unknown filter {node.name!r}"
        if isinstance(node, nodes.Test) and node.name not in ENV.tests:
            return f"unknown test {node.name!r}"
    return None


@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> nodes.Expr | str:
    """The expression's tree, or why it does not parse (cached: validation parses every string)."""
    if not source.strip():
        return "empty expression"
    try:
        parser = Parser(ENV, source, state="variable")
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
GLOBALS = frozenset(ENV.globals)  # range, dict: callables every expression has
FILTERS = frozenset(ENV.filters)  # `value | name`


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


def forget_parsed() -> None:
    """Drop what checking job files cached of their strings. After the daemon loads 1,000 jobs
    that is about 2 MiB kept for nothing until the next edit; a fire renders what it needs
    again, and its own entries stay below the caches' bounds."""
    _parse.cache_clear()
    _split.cache_clear()
    references.cache_clear()


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
    return ENV.compile_expression(source, undefined_to_none=False)


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


def _missing_message(exc: Missing, tree: nodes.Expr, context: Mapping[str, Any]) -> str:
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
        known: Iterable[Any] = [*context, *ENV.globals]
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


def _evaluate(source: str, context: Mapping[str, Any]) -> Any:
    tree = _parse_or_raise(source)
    try:
        value = native(_compiled(source)(dict(context)))
    except Missing as exc:
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


def render(text: str, context: Mapping[str, Any]) -> str:
    """``text`` with each ``${{ expr }}`` replaced by its value as text.

    Text of a value: a string as is, a bool ``true``/``false``, None empty, a number ``str()``,
    a list or mapping compact JSON. For ``run`` scripts use ``render_script``, which quotes
    each value for the quotes it stands in. Raises ``ExpressionError``.
    """
    if OPEN not in text:
        return text
    out = []
    for part in _split_or_raise(text):
        if isinstance(part, str):
            out.append(part)
            continue
        out.append(text_of(_evaluate(part.source, context)))
    return "".join(out)


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
            state, prev = shell.scan(part, state, prev)
            continue
        value = text_of(_evaluate(part.source, context))
        out.append(value if part.raw else shell.quote(value, state))
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


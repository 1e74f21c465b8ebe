"""The layering in ``pipeline/__init__.py``'s docstring is the code's: every module is named
there, and imports flow one way (a module imports only modules named before it; the modules of
one package import each other freely). Read from the source, so a new module, a renamed one or
an import that reaches up fails here with the names to fix."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent


def layers(doc: str) -> dict[str, int]:
    """Each module the docstring names (``pipeline.x``) -> its place in the order.

    A row starts with four spaces, and its names go on in lines of six; the names end where
    two spaces begin its words. ``pkg/ (a, b)`` names the package and its modules ``a`` and
    ``b``, which all share the package's place.
    """
    rows: list[str] = []
    for line in doc.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if indent not in (4, 6) or not line.strip():
            continue
        names = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        if indent == 4:
            rows.append(names)
        else:
            rows[-1] += " " + names
    order: dict[str, int] = {}
    place = 0
    for text in rows:
        packages = re.findall(r"(\w+)/\s*\(([^)]*)\)", text)
        rest = re.sub(r"(\w+)/\s*\([^)]*\)", r"\1/", text)
        inside = {package: [m.strip() for m in modules.split(",")]
                  for package, modules in packages}
        for token in (t.strip() for t in rest.split(",")):
            if not token:
                continue
            name = token.removesuffix("/")
            assert re.fullmatch(r"\w+", name), f"not a module name in the layering: {token!r}"
            order[f"pipeline.{name}"] = place
            for module in inside.get(name, []):
                order[f"pipeline.{name}.{module}"] = place
            place += 1
    return order


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "pipeline":  # this docstring's own module
            found[name] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """The project's modules ``path`` imports at run time, anywhere in it (not the imports
    under ``if TYPE_CHECKING:``, which only the type checker follows)."""
    found: set[str] = set()

    def resolve(dotted: str) -> None:
        while dotted not in known and "." in dotted:
            dotted = dotted.rsplit(".", 1)[0]
        if dotted in known and dotted != "pipeline":
            found.add(dotted)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    resolve(alias.name)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}: a relative import"
                for alias in child.names:
                    resolve(f"{child.module}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def unit(name: str) -> str:
    """What a module belongs to: its package under ``pipeline``, or itself."""
    return ".".join(name.split(".")[:2])


def test_every_module_is_named_in_the_layering_and_only_those() -> None:
    named, there = set(layers(pipeline.__doc__ or "")), set(modules())
    assert sorted(there - named) == [], "modules the docstring of pipeline/__init__.py " \
        "does not name: put each in its layer"
    assert sorted(named - there) == [], "names in the layering that are no module"


def test_imports_flow_one_way() -> None:
    order = layers(pipeline.__doc__ or "")
    found = modules()
    upward = []
    for name, path in found.items():
        for target in sorted(imported(path, set(found))):
            if unit(target) == unit(name) or target not in order or name not in order:
                continue
            if order[target] >= order[name]:
                upward.append(f"{name} imports {target}, named at or after it")
    assert upward == []


def test_the_layering_is_read_as_written() -> None:
    doc = ("intro\n\n    a, b    words\n            more words\n    c/ (d,  words\n"
           "      e), f  words\n\nthe end\n")
    assert layers(doc) == {"pipeline.a": 0, "pipeline.b": 1, "pipeline.c": 2,
                           "pipeline.c.d": 2, "pipeline.c.e": 2, "pipeline.f": 3}


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    """The check can fail: a lazy import of a later module inside a function counts, one
    under TYPE_CHECKING does not."""
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from pipeline.daemon import Daemon\n"
                      "def f():\n    from pipeline import scheduler\n"
                      "    from pipeline.http.app import StatusApp\n")
    known = set(modules())
    assert imported(source, known) == {"pipeline.scheduler", "pipeline.http.app"}

"""`file:` globs (pipeline.globs): what they match, on real folders in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import globs

FILES = ["a.csv", "b.txt", ".hidden.csv", "sub/c.csv", "sub/deep/d.csv", ".cache/e.csv",
         "sub/.f.csv", "sub/deep/g.CSV", "x1.csv", "x22.csv"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (tmp_path / "folder.csv").mkdir()  # a folder is never a match
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # a symlink loop ends
    return tmp_path


@pytest.mark.parametrize(("pattern", "expected"), [
    ("*.csv", ["a.csv", "x1.csv", "x22.csv"]),
    ("x?.csv", ["x1.csv"]),
    ("x[0-9]*.csv", ["x1.csv", "x22.csv"]),
    ("[!ax]*", ["b.txt"]),
    (".*.csv", [".hidden.csv"]),
    ("*/*.csv", ["sub/c.csv"]),
    ("**/*.csv", ["a.csv", "sub/c.csv", "sub/deep/d.csv", "x1.csv", "x22.csv"]),
    ("**/deep/*", ["sub/deep/d.csv", "sub/deep/g.CSV"]),
    ("sub/**/*.csv", ["sub/c.csv", "sub/deep/d.csv", "sub/loop/a.csv", "sub/loop/x1.csv",
                      "sub/loop/x22.csv"]),
    ("a.csv", ["a.csv"]),
    ("sub/deep/d.csv", ["sub/deep/d.csv"]),
    ("nothere/*.csv", []),
])
def test_a_glob_matches_what_the_shell_would(tree: Path, pattern: str,
                                             expected: list[str]) -> None:
    glob = globs.parse(str(tree / pattern))
    scanned = sorted(os.path.relpath(path, tree) for path, _ in glob.scan())
    assert scanned == expected
    # `matches` says the same of each file by its name alone (it reads no folder, so it
    # knows nothing of the symlink; that a path is a regular file is for the caller's stat)
    direct = sorted(name for name in FILES if glob.matches(str(tree / name)))
    assert direct == [e for e in expected if "loop" not in e]


def test_the_root_is_the_folder_before_the_first_wildcard(tree: Path) -> None:
    assert globs.parse(str(tree / "sub/deep/*.csv")).root == str(tree / "sub" / "deep")
    assert globs.parse(str(tree / "a.csv")).root == str(tree)
    assert not globs.parse(str(tree / "*.csv")).deep
    assert globs.parse(str(tree / "*/x.csv")).deep
    assert globs.parse(str(tree / "**/x.csv")).deep


def test_scan_gives_each_file_its_stat(tree: Path) -> None:
    [(path, info)] = list(globs.parse(str(tree / "a.csv")).scan())
    assert (path, info.st_size) == (str(tree / "a.csv"), len("a.csv"))


@pytest.mark.parametrize(("pattern", "message"), [
    ("", "the glob is empty"),
    ("relative/*.csv", "is not an absolute path"),
    ("/in/", "names a folder, not files"),
    ("/in/**", "ends with **, which matches folders"),
    ("/in/**.csv", "** must be a whole path component (write **/*.csv for any depth)"),
    ("/in/x[ab.csv", "has a [ without its closing ]"),
    ("/in/\0", "NUL"),
])
def test_a_bad_glob_says_why(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=r".*") as raised:
        globs.parse(pattern)
    assert message in str(raised.value)


def test_an_unreadable_folder_is_passed_over(tree: Path) -> None:
    (tree / "sub").chmod(0)
    try:
        if os.access(tree / "sub", os.R_OK):
            pytest.skip("running as root: every folder can be read")
        found = [os.path.relpath(p, tree) for p, _ in globs.parse(str(tree / "**/*.csv")).scan()]
    finally:
        (tree / "sub").chmod(0o755)
    assert sorted(found) == ["a.csv", "x1.csv", "x22.csv"]

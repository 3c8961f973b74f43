"""The docs that ship beside the code: docs/DESIGN.md's module map names the tree as it is."""

from __future__ import annotations

import re

from tests.support.paths import REPOSITORY

DESIGN = REPOSITORY / "docs" / "DESIGN.md"
PACKAGE = REPOSITORY / "broker"


def _mapped_modules(text: str) -> tuple[set[str], set[str]]:
    """The modules the map names (paths under broker/), and the packages it names whole
    (a package row that lists none of its modules, as ``sim/``)."""
    section = text.split("## Modules (broker/)", 1)[1].split("\n## ", 1)[0]
    modules: set[str] = set()
    whole: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first, second = row.split("|")[1:3]
        for name in re.findall(r"`([\w/]+(?:\.py)?)`", first):
            if not name.endswith("/"):
                modules.add(name)
                continue
            inside = re.findall(r"`(\w+\.py)`", second)
            modules.update(name + module for module in inside)
            if not inside:
                whole.add(name)
    return modules, whole


def _tree_modules(whole: set[str]) -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in name:
            continue
        if any(name.startswith(package) for package in whole):
            continue
        found.add(name)
    return found


def test_the_design_maps_every_module_of_the_tree_and_no_other() -> None:
    mapped, whole = _mapped_modules(DESIGN.read_text())
    assert whole == {"sim/"}
    tree = _tree_modules(whole)
    assert sorted(tree - mapped) == [], "modules the map leaves out"
    assert sorted(mapped - tree) == [], "modules the map names that the tree lacks"


def test_the_map_reader_sees_a_missing_and_a_stale_module() -> None:
    """The check above can fail: a row dropped, and a row for a module that is gone."""
    text = DESIGN.read_text()
    mapped, whole = _mapped_modules(text)
    dropped = "\n".join(line for line in text.splitlines() if "`ratelimit.py`" not in line)
    assert _mapped_modules(dropped)[0] == mapped - {"ratelimit.py", "shared.py"}
    stale = text.replace("`rules.py`", "`limits.py`")
    assert "limits.py" in _mapped_modules(stale)[0] - _tree_modules(whole)

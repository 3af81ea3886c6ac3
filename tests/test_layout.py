"""The package's layout (issue 33, DESIGN §2): no import cycle in src/fluentdream or analysis/
(imports inside functions count: one that only breaks a cycle is still a cycle), imports that
follow the layers (LAYERS, which each subpackage's docstring states in its "Imports:" line), no
source file over 400 lines, a small top level, and a `make help` line for every target. The
checks are plain functions of a directory, shown to fail on packages made here."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "fluentdream"
MAX_LINES = 400
LENGTH_CHECKED = ("src", "analysis", "benchmarks", "experiments", "paper_figures")

# What each part of fluentdream may import besides itself (the subpackage names, relative to
# fluentdream). The shared top-level modules may be imported by every part and import only each
# other; "" is the package's own __init__, the public API.
SHARED = {"errors", "files", "provenance", "moved"}
LAYERS = {
    "": {"report", "core", "targets", "models"},
    "models": set(),
    "targets": {"models"},
    "core": {"targets", "models"},
    "core.scoring": {"core.context", "core.tokens", "core.ragged", "targets", "models"},
    "data": {"core", "targets", "models"},
    "runs": {"data", "core", "targets", "models"},
    "report": {"runs", "data", "core", "targets", "models"},
    "cli": {"runs", "report", "data", "core", "targets", "models"},
}


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (the directory of `package`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` imports, at module level or inside functions.
    `from a import b` counts a and, where it is a module, a.b; a package's __init__ is the
    package itself (importing a.b does not count as importing a)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def graph(*trees: tuple[Path, str]) -> dict[str, set[str]]:
    known = {}
    for root, package in trees:
        known.update(modules(root, package))
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def part_of(name: str, package: str = "fluentdream") -> str:
    """The LAYERS key a module of `package` belongs to ("" for the top level)."""
    rel = name.removeprefix(package).lstrip(".")
    if rel.split(".")[0] in SHARED:
        return rel.split(".")[0]
    return max((key for key in LAYERS if rel == key or rel.startswith(key + ".") or key == ""),
               key=len)


def against_layers(edges: dict[str, set[str]], package: str = "fluentdream") -> list[str]:
    """'a -> b' for every import inside `package` that LAYERS does not allow."""
    bad = []
    for source, targets in sorted(edges.items()):
        if not source.startswith(package):
            continue
        here = part_of(source, package)
        allowed = SHARED if here in SHARED else LAYERS[here] | SHARED | ({here} - {""})
        for target in sorted(t for t in targets if t.startswith(package)):
            rel = target.removeprefix(package).lstrip(".")
            if not any(rel == a or rel.startswith(a + ".") for a in allowed):
                bad.append(f"{source} -> {target}")
    return bad


def test_no_import_cycle_in_the_package_or_analysis():
    edges = graph((SRC, "fluentdream"), (REPO / "analysis", "analysis"))
    assert len(edges) > 60
    assert cycles(edges) == []


def test_imports_follow_the_layers():
    assert against_layers(graph((SRC, "fluentdream"))) == []


@pytest.mark.parametrize("key", sorted(LAYERS))
def test_each_docstring_states_its_layer(key):
    """Each subpackage's docstring names what it may import (an "Imports:" line); LAYERS holds
    the same, so the docstring and the check cannot drift apart."""
    path = SRC.joinpath(*key.split("."), "__init__.py") if key else SRC / "__init__.py"
    doc = " ".join(ast.get_docstring(ast.parse(path.read_text())).split())
    stated = re.search(r"Imports: (.*?)(?:;|\.(?:\s|$))", doc)[1]
    names = {n.strip() for n in re.split(r",| and ", stated)} - {"the shared modules", ""}
    assert names == LAYERS[key], f"{path}: {stated!r}"


def test_the_layer_check_fails_on_a_package_that_breaks_it(tmp_path):
    """A package laid out like fluentdream whose core imports runs inside a function and whose
    models imports core: both imports are reported, the allowed ones are not."""
    pkg = tmp_path / "fluentdream"
    for sub in ("core", "runs", "models"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .core import steps\n")
    (pkg / "errors.py").write_text("")
    (pkg / "core" / "steps.py").write_text(
        "from ..errors import UserError\nfrom ..models import load\n\n"
        "def f():\n    from ..runs.store import save\n")
    (pkg / "runs" / "store.py").write_text("from ..core.steps import f\n")
    (pkg / "models" / "load.py").write_text("from ..core import steps\n")
    bad = against_layers(graph((pkg, "fluentdream")))
    assert bad == ["fluentdream.core.steps -> fluentdream.runs.store",
                   "fluentdream.models.load -> fluentdream.core",
                   "fluentdream.models.load -> fluentdream.core.steps"]


def test_the_cycle_check_fails_on_a_package_with_a_cycle(tmp_path):
    """a -> b -> c -> a, the last import hidden in a function; d imports a and is no part of
    the cycle; e and f import each other at module level."""
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .c import g\n")
    (pkg / "c.py").write_text("def g():\n    from .a import x\n    return x\n")
    (pkg / "d.py").write_text("import toy.a\n")
    (pkg / "e.py").write_text("from toy import f\n")
    (pkg / "f.py").write_text("from .e import y\n")
    assert sorted(cycles(graph((pkg, "toy")))) == [["toy.a", "toy.b", "toy.c"], ["toy.e", "toy.f"]]
    (pkg / "c.py").write_text("def g():\n    return 1\n")
    assert cycles(graph((pkg, "toy"))) == [["toy.e", "toy.f"]]


def test_no_source_file_is_longer_than_400_lines():
    long = {str(p.relative_to(REPO)): n for d in LENGTH_CHECKED for p in (REPO / d).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_a_small_top_level_and_at_least_four_subpackages():
    top = sorted(p.name for p in SRC.glob("*.py"))
    subpackages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert len(top) <= 8 and {p.removesuffix(".py") for p in top} == SHARED | {"__init__"}
    assert len(subpackages) >= 4 and set(subpackages) == {k for k in LAYERS if k and "." not in k}


def test_make_help_lists_every_target():
    """Every target a user can name (.PHONY) has a `## ` line, so `make help` shows it."""
    text = (REPO / "Makefile").read_text()
    phony = {t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()}
    shown = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    listed = set(re.findall(r"^\s+make (\S+)", shown, re.M))
    assert phony and phony == listed

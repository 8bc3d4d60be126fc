"""The floor plan holds (docs/architecture.md): every import in lwrcli, lazy ones and those
under TYPE_CHECKING included, goes to the same floor or a lower one, no modules import each
other in a circle, no module grows past ~450 lines, and the core names no method."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lwrcli"

# Lowest first. A module may import from its own floor or any floor below.
FLOORS: list[tuple[str, ...]] = [
    ("lwrcli", "lwrcli.errors", "lwrcli.hooks", "lwrcli.registry"),
    ("lwrcli.runtime",),
    ("lwrcli.config",),
    ("lwrcli.data",),
    ("lwrcli.models",),
    ("lwrcli.checkpoint",),
    ("lwrcli.methods",),
    ("lwrcli.train",),
    ("lwrcli.use",),
    ("lwrcli.studies",),
    ("lwrcli.cli", "lwrcli.__main__"),
]
MAX_LINES = 450
# The core: what a method must never need to edit (issue 23).
CORE = (
    "config",
    "train/build.py",
    "train/components.py",
    "train/engine.py",
    "checkpoint",
    "train/resolve.py",
    "studies/report.py",
    "studies/presets.py",
)
METHOD_WORDS = re.compile(
    r"bbn|seql|ib_|etf|max_norm|mislas|\bride\b|\bsade\b|balpoe|\bexperts\b|paco|\bbcl\b",
    re.IGNORECASE,
)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """Every lwrcli module `path` imports, wherever the import statement sits."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from pkg import name`: the module pkg
                target = target.rpartition(".")[0]
            if target.startswith("lwrcli") and target != name:
                found.add(target)
    # `from lwrcli.x import y` names lwrcli.x; the parent packages are not dependencies.
    return {t for t in found if not (t == "lwrcli" and name != "lwrcli")}


def floor(name: str) -> int:
    best, level = -1, -1
    for i, members in enumerate(FLOORS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and len(member) > best:
                best, level = len(member), i
    assert level >= 0, f"{name} is on no floor: add it to FLOORS and docs/architecture.md"
    return level


def graph() -> dict[str, set[str]]:
    return {name: imports(path, name) for name, path in modules().items()}


def test_every_import_goes_down_or_stays_on_its_floor() -> None:
    upward = [
        f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
        for a, targets in graph().items()
        for b in sorted(targets)
        if floor(b) > floor(a)
    ]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    # A package's __init__ re-exporting its own modules is not a circle of dependencies.
    edges = defaultdict(set)
    for a, targets in graph().items():
        for b in targets:
            if not b.startswith(a + "."):
                edges[a].add(b)
    found = cycles(edges)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checker_finds_circles_and_upward_imports() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert floor("lwrcli.train.engine") > floor("lwrcli.methods.ema") > floor("lwrcli.config")
    assert floor("lwrcli.errors") == 0 and floor("lwrcli.cli.main") == len(FLOORS) - 1


def test_no_module_is_over_the_size_limit() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# The migration table maps the old keys, which named methods, to their new places: it is the
# one core module that must name them.
NAMES_OLD_KEYS = ("config/migrate.py",)


def test_the_core_names_no_method() -> None:
    hits = []
    for entry in CORE:
        paths = sorted((PACKAGE / entry).rglob("*.py")) if "." not in entry else [PACKAGE / entry]
        for path in paths:
            if str(path.relative_to(PACKAGE)) in NAMES_OLD_KEYS:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if METHOD_WORDS.search(line):
                    hits.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not hits, "the core names a method:\n" + "\n".join(hits)

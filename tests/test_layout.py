"""The package's shape: no import cycles, stages that meet only through ``model/`` and files, short modules.

The import graph is read from the source (every ``import`` in a module, those inside functions and under
``TYPE_CHECKING`` included), so a cycle that only a lazy import hides still fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "anna_embed"
#: Packages of one stage each; ``model`` (the embedder and its weights) is what every stage may share.
STAGES = frozenset({"mine", "train", "evaluate", "serve", "adapt", "pipeline"})
#: Packages that chain stages: they see another stage only through its package face and its config.
ORCHESTRATORS = frozenset({"adapt", "pipeline"})
SHARED_PACKAGE = "model"
MAX_LINES = 400
#: Modules allowed past MAX_LINES: the task table (one entry per task, data rather than code).
LONG_MODULES = frozenset({"anna_embed.tasks"})


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, from ``__init__.py``)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(dotted: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of ``dotted`` that is one of our modules (None: not ours)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in known:
            return name
    return None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from pkg import sub`` imports the submodule ``pkg.sub``; ``from mod import x`` imports mod
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        found |= {t for t in (_target(x, known) for x in targets) if t is not None and t != name}
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports."""
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def group(name: str) -> str | None:
    """The package a module belongs to (``mine``, ``model``...), or None for a top-level module."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and (SRC / ROOT / parts[1]).is_dir() else None


def allowed(source: str, target: str) -> bool:
    """Whether ``source`` may import ``target``.

    Within a package anything goes. Top-level helpers and ``model/`` use top-level helpers and ``model/``
    only. A stage uses those too; an orchestrator (adapt, pipeline) also sees another stage, through its
    package face (``anna_embed.mine``: its run function) and its ``config`` module, nothing else.
    """
    here, there = group(source), group(target)
    if here == there:
        return True
    if here in (None, SHARED_PACKAGE):
        return there in (None, SHARED_PACKAGE)
    if there in (None, SHARED_PACKAGE):
        return True
    return here in ORCHESTRATORS and target in (f"{ROOT}.{there}", f"{ROOT}.{there}.config")


def boundary_violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that :func:`allowed` refuses, as ``source -> target``."""
    return [
        f"{s} -> {t}" for s, targets in sorted(edges.items()) for t in sorted(targets) if not allowed(s, t)
    ]


def test_the_import_graph_reads_function_level_and_type_checking_imports():
    edges = graph()
    assert len(edges) > 40
    assert f"{ROOT}.model.embedder" in edges[f"{ROOT}"]  # the lazy ``Embedder`` of the package
    assert any(f"{ROOT}.model" in target for target in edges[f"{ROOT}.encode"])


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_stages_meet_only_through_model_and_their_faces():
    assert boundary_violations(graph()) == []


def test_modules_stay_short():
    long = {
        name: n
        for name, path in modules().items()
        if name not in LONG_MODULES and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"

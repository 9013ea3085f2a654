"""The import graph of src/prunerzero: module -> the prunerzero modules it imports, and its cycles.

    python tools/import_graph.py [SRC_DIR] [--edges]

Every import counts, also those inside functions (a lazy import is still a dependency: it only
moves the failure to run time); only ``if TYPE_CHECKING:`` imports are left out.
``from .pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``. A package's
``__init__`` importing its own submodules is the usual re-export and is left out of the cycles (a
submodule importing its package's ``__init__`` is not).
Cycles are the strongly connected components with more than one module (Tarjan). Also prints the
largest modules by lines.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node, except what sits under ``if TYPE_CHECKING:`` (never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def graph(root: Path) -> tuple[dict[str, set[str]], dict[str, int]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in files else source)
            for t in targets:
                while t and t not in files:  # "prunerzero.search.engine.x" -> the module that holds it
                    t = t.rpartition(".")[0]
                if t and t != mod and not (is_pkg and t.startswith(mod + ".")):
                    edges[mod].add(t)
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in files.items()}
    return edges, sizes


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return sorted(out)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0] if args else Path(__file__).resolve().parents[1] / "src" / "prunerzero")
    edges, sizes = graph(root)
    strip = lambda m: m.removeprefix("prunerzero.") or "prunerzero"  # noqa: E731
    n_edges = sum(len(v) for v in edges.values())
    print(f"{len(edges)} modules, {n_edges} import edges")
    if "--edges" in argv:
        for mod in sorted(edges):
            print(f"  {strip(mod)} -> {', '.join(sorted(strip(t) for t in edges[mod])) or '-'}")
    found = cycles(edges)
    print(f"{len(found)} import cycle(s)" + (":" if found else ""))
    for comp in found:
        print("  " + " <-> ".join(strip(m) for m in comp))
    print("largest modules (lines):")
    for mod, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {n:5d} {strip(mod)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

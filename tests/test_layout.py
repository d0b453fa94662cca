"""The package's shape, read from the source (ast): the engine imports nothing from evaluation, training or the
CLI; the core never imports rich; no two modules import each other in a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flowcache_core", "flowcache_cli")
APART = ("flowcache_core.eval", "flowcache_core.training")  # not part of the engine


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every flowcache module `path` imports, at any depth of the file (function-level imports too)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = name.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                base = ".".join(pkg + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {n: _imports(p, n, set(_modules())) for n, p in _modules().items()}


def _is_engine(name: str) -> bool:
    return name.startswith("flowcache_core") and not name.startswith(APART)


def test_the_engine_imports_no_evaluation_training_or_cli():
    bad = [(a, b) for a, deps in GRAPH.items() if _is_engine(a) for b in deps
           if b.startswith(APART) or b.startswith("flowcache_cli")]
    assert not bad, bad


def test_the_core_never_imports_rich():
    for name, path in _modules().items():
        if name.startswith("flowcache_core"):
            tree = ast.parse(path.read_text())
            mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert "rich" not in mods, name


def test_no_import_cycle():
    # package __init__ modules that only re-export are edges too; a cycle is a path from a module back to itself
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(GRAPH.get(n, ())):
            if d == n.rpartition(".")[0]:  # a module importing its own package's __init__ is not a cycle of ours
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError(" -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_the_walk_sees_real_edges():
    """The checks above would pass on an empty graph: make sure the walk finds the edges we know of."""
    assert "flowcache_core.engine.loop" in GRAPH["flowcache_core.api"]
    assert "flowcache_core.models.magi1.family" in GRAPH["flowcache_core.models.registry"]
    assert "flowcache_core.api" in GRAPH["flowcache_cli.generate"]

"""The layering DESIGN.md states, checked: no import loop inside backend/ or components/, engines
that never see the LocalBackend facade, and a UI that never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, *, typing_too: bool) -> list[str]:
    """Every module name `path` imports, at module level or inside functions (`from a import b`
    gives `a.b`, which names a module or a name in `a`); imports under `if TYPE_CHECKING:` only
    with `typing_too`."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not typing_too:
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                out.extend(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                out.extend(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    """module of `package` -> the modules of `package` it imports (the longest prefix of each name
    that is a module; parent packages are left out, the lazy `backend.local` face keeps them light)."""
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in imports_of(path, typing_too=False):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_known_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_in_backend_imports_itself_in_a_loop():
    graph = import_graph("backend")
    assert "backend.local.runtime" in graph and "backend.local.steering" in graph["backend.local.backend"]
    assert cycles(graph) == []


def test_no_component_imports_itself_in_a_loop():
    graph = import_graph("components")
    assert "components.gate" in graph["components.state"]
    assert cycles(graph) == []


def test_only_the_package_face_get_backend_the_service_and_tests_import_local_backend():
    allowed = {"backend/local/__init__.py", "backend/__init__.py", "backend/http/service.py"}
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv/", "tests/", "bench/")) or "/." in f"/{rel}" or rel in allowed:
            continue  # tests and benchmarks drive the facade itself
        names = imports_of(path, typing_too=True)
        if any(n in ("backend.local.LocalBackend", "backend.local.backend.LocalBackend") or
               n.startswith("backend.local.backend") for n in names):
            offenders.append(rel)
    assert offenders == []


def test_pages_and_components_import_without_torch():
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "components").glob("*.py"))]
    modules = [_module_name(p) for p in files if p.name != "__init__.py"]
    assert "pages.steer" in modules and "components.state" in modules
    script = (
        "import importlib, sys\n"
        "import streamlit  # noqa: F401\n"
        f"for name in {[m for m in modules if m != 'app' and not m.startswith('pages.')]!r}:\n"
        "    importlib.import_module(name)\n"
        "import ast\n"
        f"for path in {[str(p) for p in files if p.parent.name == 'pages' or p.name == 'app.py']!r}:\n"
        "    tree = ast.parse(open(path).read())\n"
        "    for node in ast.walk(tree):\n"
        "        if isinstance(node, (ast.Import, ast.ImportFrom)):\n"
        "            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or '']\n"
        "            for n in names:\n"
        "                if n.split('.')[0] in ('components', 'backend'):\n"
        "                    importlib.import_module(n)\n"
        "heavy = sorted(m for m in ('torch', 'transformer_lens', 'sae_lens', 'circuit_tracer') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"

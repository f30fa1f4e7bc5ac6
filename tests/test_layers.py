"""The import rules of the layers, read from the source (no import runs):

- flywheel/ (the core library) never imports prefect, flywheel.tasks or flywheel.flows;
- kernels/ imports only torch, triton, a few standard modules and itself;
- tasks/ never imports flows/;
- no import cycle among the installed modules (flywheel/, flows/, tasks/, kernels/, installed as
  flywheel, flywheel.flows, flywheel.tasks, flywheel.kernels), counting function-local imports:
  an import moved into a function hides a cycle, it does not break it;
- no function-local import of a module the file already imports at the top;
- no library module over MAX_LINES lines.
"""

import ast
import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"flywheel": "flywheel", "flows": "flywheel.flows", "tasks": "flywheel.tasks",
            "kernels": "flywheel.kernels", "deployments": "flywheel.deployments"}
RULES = {
    "flywheel": ("prefect", "flywheel.tasks", "flywheel.flows"),
    "kernels": ("prefect", "flywheel.tasks", "flywheel.flows", "flywheel.lake",
                "flywheel.reward", "flywheel.policy", "flywheel.stages", "transformers", "vllm"),
    "tasks": ("flywheel.flows",),
}
MAX_LINES = 450


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every installed module's dotted name -> its file."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, module: str, node: ast.ImportFrom | ast.Import,
             known: set[str]) -> list[str]:
    """The modules an import statement loads: `from a.b import c` is a.b.c when that is a
    module, else a.b."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")[: -node.level]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def imports_of(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules imported at the top of the file, modules imported inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top, local = set(), set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.update(_resolve("", module, node, known))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    local.update(_resolve("", module, inner, known))
    return top, local


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the installed modules it imports (top level and function-local)."""
    files = module_files(root)
    known = set(files)
    graph = {}
    for module, path in files.items():
        top, local = imports_of(module, path, known)
        graph[module] = {m for m in top | local if m in known and m != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_layers_import_only_what_they_may():
    files = module_files()
    broken = []
    for module, path in files.items():
        folder = path.relative_to(ROOT).parts[0]
        top, local = imports_of(module, path, set(files))
        for forbidden in RULES.get(folder, ()):
            bad = sorted(m for m in top | local if m == forbidden
                         or m.startswith(forbidden + "."))
            if bad:
                broken.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert broken == []


def test_kernels_import_only_torch_and_triton():
    std = {"math", "functools", "os", "typing", "__future__", "dataclasses"}
    files = module_files()
    for module, path in files.items():
        if path.relative_to(ROOT).parts[0] != "kernels":
            continue
        top, local = imports_of(module, path, set(files))
        extra = {m for m in top | local if not m.startswith("flywheel.kernels")
                 and m.split(".")[0] not in {"torch", "triton"} | std}
        assert extra == set(), f"{path.name} imports {extra}"


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_an_injected_cycle_is_found(tmp_path):
    """On a copy of the code, the errors module (imported by nearly everything) made to import
    a stage closes a loop through the stage's imports: the check must name it."""
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, tmp_path / folder)
    assert cycles(import_graph(tmp_path)) == []
    errors = tmp_path / "flywheel" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom flywheel.stages import promote  # noqa\n")
    found = cycles(import_graph(tmp_path))
    assert found and any({"flywheel.errors", "flywheel.stages.promote"} <= set(c) for c in found)


def test_cycle_finder_on_hand_made_graphs():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    two = cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})
    assert sorted(two) == [["a", "b"], ["c", "d"]]


def test_no_function_local_import_of_a_module_already_imported_at_the_top():
    files = module_files()
    repeated = []
    for module, path in files.items():
        top, local = imports_of(module, path, set(files))
        if both := sorted(top & local):
            repeated.append(f"{path.relative_to(ROOT)}: {both}")
    assert repeated == []


def test_no_library_module_over_the_size_limit():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in module_files().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert long == []


def test_every_package_is_installed():
    """Each folder with an __init__.py is listed in pyproject.toml's packages, or the wheel would
    leave it out (the package-dir mapping rules out automatic discovery)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {m for m, p in module_files().items() if p.name == "__init__.py"}
    assert packages - listed == set()

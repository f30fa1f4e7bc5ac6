"""The import rules of the layers: flywheel/ never imports prefect, tasks or flows; kernels/
imports only torch, triton and itself; tasks/ never imports flows."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = {
    "flywheel": {"prefect", "tasks", "flows"},
    "kernels": {"prefect", "tasks", "flows", "flywheel", "transformers", "vllm"},
    "tasks": {"flows"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layers_import_only_what_they_may():
    broken = []
    for layer, forbidden in RULES.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            bad = _imports(path) & forbidden
            if bad:
                broken.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert broken == []


def test_kernels_import_only_torch_and_triton():
    std = {"math", "functools", "os", "typing", "__future__", "dataclasses"}
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        extra = _imports(path) - {"torch", "triton", "kernels"} - std
        assert extra == set(), f"{path.name} imports {extra}"

"""The import graph: data -> pool -> gen | score (side by side) -> benchmarks, and stages that
know nothing of executors. Read from the source with ast, as an import linter would."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data", "pool", "gen", "score")
ALLOWED = {"data": {"data"}, "pool": {"data", "pool"}, "gen": {"data", "pool", "gen"},
           "score": {"data", "pool", "score"}}
STAGES = ("gen/worker.py", "score/stage.py", "score/engine.py", "score/hf_backend.py")
EXECUTORS = {"pool.executor", "pool.ray_executor", "pool.runner"}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for module in imports(path):
                top = module.split(".")[0]
                if top in PACKAGES and top not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, wrong


def test_stages_import_no_executor():
    wrong = [f"{stage} imports {m}" for stage in STAGES for m in imports(ROOT / stage) if m in EXECUTORS]
    assert not wrong, wrong

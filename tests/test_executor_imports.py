"""The executor imports only the planner's domain modules (plans, instances, model cards, errors, data
files, the accuracy table), never its solvers or CLI; and the planner never imports the executor."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"planner.plan", "planner.instance", "planner.moe_model", "planner.errors", "planner.workload_files",
           "planner.accuracy_table"}


def _planner_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        out.update(n for n in names if n == "planner" or n.startswith("planner."))
    return out


def test_the_executor_imports_only_domain_modules():
    for path in sorted((ROOT / "planner" / "executor").rglob("*.py")):
        bad = {m for m in _planner_imports(path) if not m.startswith("planner.executor") and m not in ALLOWED}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_planner_never_imports_the_executor():
    for path in sorted((ROOT / "planner").glob("*.py")):
        assert not any(m.startswith("planner.executor") for m in _planner_imports(path)), path.name

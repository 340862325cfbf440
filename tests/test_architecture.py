"""Imports go one way, at module level and inside functions alike (docs/architecture.md):

* packages: ``planner`` -> ``solvers`` -> ``models`` (-> numpy, pyomo, ortools);
* inside ``planner``: domain <- cost <- spaces <- planners <- sim <- api <- bench <- cli; each
  sub-package imports only itself and those before it; ``executor`` (the torch extra) imports
  ``domain`` and ``cost`` only, and nothing imports it but the CLI and the runtime; ``runtime``
  imports everything up to ``api`` and ``executor``, and nothing imports it but the CLI;
* registered solvers find each other through the registry, never by importing each other;
* torch stays optional: the planner imports and solves with torch blocked.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"models": {"solvers", "planner"}, "solvers": {"planner"}}
ORDER = ("domain", "cost", "spaces", "planners", "sim", "api", "bench", "cli")
ALLOWED = {name: set(ORDER[: i + 1]) for i, name in enumerate(ORDER)}
ALLOWED["executor"] = {"domain", "cost", "executor"}
ALLOWED["runtime"] = set(ORDER[: ORDER.index("api") + 1]) | {"executor", "runtime"}
ALLOWED["cli"] = set(ORDER) | {"executor", "runtime"}
# planner/__init__.py re-exports the API; planner/__main__.py runs the CLI.
TOP_LEVEL = {"__init__": "api", "__main__": "cli", "api": "api"}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in ``source``, at any depth; ``from a import b``
    yields ``a.b`` (b may be a module)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def sub_package(path: Path) -> str:
    """The layer of a file under planner/: its sub-package, or the layer of a top-level module."""
    rel = path.relative_to(ROOT / "planner")
    return rel.parts[0] if len(rel.parts) > 1 else TOP_LEVEL.get(rel.stem, rel.stem)


def layer_violations(path: Path, source: str | None = None) -> list[str]:
    """Imports in ``path`` (under planner/) against the sub-package order."""
    source = path.read_text(encoding="utf-8") if source is None else source
    here = sub_package(path)
    bad = []
    for line, module in imported_modules(source):
        if module.startswith("."):
            bad.append(f"{path.relative_to(ROOT)}:{line}: relative import {module!r} (use absolute imports)")
            continue
        parts = module.split(".")
        if parts[0] != "planner" or len(parts) < 2:
            continue
        target = parts[1] if parts[1] not in TOP_LEVEL else TOP_LEVEL[parts[1]]
        if target in ALLOWED and target not in ALLOWED.get(here, set()):
            bad.append(f"{path.relative_to(ROOT)}:{line}: planner.{here} imports {module} "
                       f"(planner.{target} comes after it)")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_one_way(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = {m.split(".")[0] for _, m in imported_modules(path.read_text(encoding="utf-8"))} & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_planner_sub_packages_import_in_order():
    found = [v for path in sorted((ROOT / "planner").rglob("*.py")) for v in layer_violations(path)]
    assert not found, "\n".join(found)


def test_every_planner_module_lives_in_a_known_sub_package():
    layers = set(ALLOWED) | set(TOP_LEVEL)
    strays = [str(p.relative_to(ROOT)) for p in (ROOT / "planner").rglob("*.py") if sub_package(p) not in layers]
    assert not strays, strays


@pytest.mark.parametrize("source, expected", [
    ("from planner.planners.route_aware import route_aware\n", "planner.domain imports planner.planners.route_aware"),
    ("def f():\n    from planner import cli\n", "planner.domain imports planner.cli"),
    ("import planner.sim.engine\n", "planner.domain imports planner.sim.engine"),
    ("from . import plan\n", "relative import"),
    ("from planner.runtime import launch\n", "planner.domain imports planner.runtime.launch"),
])
def test_a_planted_import_against_the_order_is_found(source, expected):
    """The check reads imports at module level and inside functions (what a cycle hides behind)."""
    found = layer_violations(ROOT / "planner" / "domain" / "planted.py", source)
    assert len(found) == 1 and expected in found[0]
    assert not layer_violations(ROOT / "planner" / "cli" / "planted.py", source.replace("from . import plan", "import os"))


def test_registered_solvers_do_not_import_each_other():
    planners = ROOT / "planner" / "planners"
    solvers = {p.stem for p in planners.glob("*.py") if "@register(" in p.read_text(encoding="utf-8")}
    assert {"route_aware", "exact", "dp", "baselines"} <= solvers
    for name in sorted(solvers):
        source = (planners / f"{name}.py").read_text(encoding="utf-8")
        hits = [m for _, m in imported_modules(source) if m.startswith("planner.planners.")
                and m.split(".")[2] in solvers - {name}]
        assert not hits, f"planner/planners/{name}.py imports the solver module(s) {hits}: use solvers.registry.get"


def test_every_sub_package_is_importable_by_its_dotted_name():
    """No sub-package hides behind a name of the API (``planner.solve`` is the function): each
    ``import planner.X.module`` works in a fresh interpreter."""
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in sorted((ROOT / "planner").glob("*/*.py"))
               if p.stem != "__init__" and sub_package(p) in ALLOWED and sub_package(p) != "executor"]
    code = "import importlib, sys\n" + "".join(f"import {m}\n" for m in modules)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_planner_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import planner\nfrom planner.cli import main\n"
            "inst = planner.load_instance('instances/default.toml')\n"
            "assert planner.solve(inst).solution is not None\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("here, ok", [("runtime", True), ("cli", True), ("bench", False), ("executor", False), ("api", False)])
def test_only_the_cli_imports_the_runtime(here, ok):
    found = layer_violations(ROOT / "planner" / here / "planted.py", "from planner.runtime import launch\n")
    assert (not found) == ok, found


def test_the_runtime_imports_the_layers_up_to_the_api_and_the_executor():
    source = "import planner.api\nfrom planner.executor import apply\nfrom planner.sim import simulate\n"
    assert not layer_violations(ROOT / "planner" / "runtime" / "planted.py", source)
    found = layer_violations(ROOT / "planner" / "runtime" / "planted.py", "from planner.bench import run\n")
    assert len(found) == 1 and "planner.bench" in found[0]

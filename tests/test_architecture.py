"""The layout's rules, as docs/architecture.md states them, checked on the source itself.

Every import of every module of the package is read with ``ast`` (module level, inside
functions, and under ``if TYPE_CHECKING:`` alike), so a rule cannot be dodged by a late import.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlmon_middleware"

ANALYSIS = {"mlmon_middleware.analyzer", "mlmon_middleware.performance", "mlmon_middleware.alerts",
            "mlmon_middleware.quality", "mlmon_middleware.drift", "mlmon_middleware.drift.engine",
            "mlmon_middleware.drift.policy", "mlmon_middleware.drift.stats", "mlmon_middleware.drift.sequential"}
# what the analysis must not reach back into: the registry, the model, the pipeline, capture, HTTP
STATE = {"mlmon_middleware.model", "mlmon_middleware.monitor", "mlmon_middleware.pipeline", "mlmon_middleware.ingest",
         "mlmon_middleware.gauges",
         "mlmon_middleware.health", "mlmon_middleware.routes", "mlmon_middleware.counters"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, anywhere in its source (``from pkg import sub`` counts as ``pkg.sub``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
            found.update(submodules)
            if len(submodules) < len(node.names):  # names from the module itself, not only its submodules
                found.add(base)
    return found


GRAPH = {name: {m for m in imports_of(name) if m in MODULES and m != name} for name in MODULES}


def test_the_modules_are_found():
    assert {"mlmon_middleware.model", "mlmon_middleware.monitor", "mlmon_middleware.pipeline",
            "mlmon_middleware.telemetry", "mlmon_middleware.capture.asgi"} <= set(MODULES)


def test_no_import_cycle_anywhere_in_the_package():
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for name in sorted(GRAPH):
        visit(name)


@pytest.mark.parametrize("library, allowed", [
    ("opentelemetry", {"mlmon_middleware.telemetry", "mlmon_middleware.otlp_export"}),
    ("shap", {"mlmon_middleware.explain_worker"}),
    ("xgboost", {"mlmon_middleware.explain_worker"}),
    ("starlette", {"mlmon_middleware.routes", "mlmon_middleware.routes_access", "mlmon_middleware.routes_governance"}),
    ("fastapi", set()),
    ("bentoml", set()),
    ("sklearn", {"mlmon_middleware.drift.classifier", "mlmon_middleware.estimation", "mlmon_middleware.direct_loss",
                 "mlmon_middleware.causes"}),  # lazily: at a baseline build or a check
])
def test_third_party_libraries_are_imported_by_their_one_module(library, allowed):
    importers = {name for name in MODULES if any(m == library or m.startswith(library + ".") for m in imports_of(name))}
    assert importers <= allowed, f"{library} imported by {sorted(importers - allowed)}; only {sorted(allowed)} may"


def test_capture_reaches_neither_drift_nor_performance_nor_the_analyzer_nor_explanations():
    forbidden = ANALYSIS | {"mlmon_middleware.explain", "mlmon_middleware.explain_request", "mlmon_middleware.explain_worker"}
    for name in MODULES:
        if name.startswith("mlmon_middleware.capture"):
            assert not GRAPH[name] & forbidden, f"{name} imports {sorted(GRAPH[name] & forbidden)}"


def test_the_analysis_takes_its_inputs_and_never_reaches_back():
    for name in ANALYSIS:
        assert not GRAPH[name] & STATE, f"{name} imports {sorted(GRAPH[name] & STATE)}"
        assert not any(m.startswith("mlmon_middleware.capture") for m in GRAPH[name]), name


def test_no_module_is_longer_than_400_lines_without_saying_why():
    for name, path in MODULES.items():
        text = path.read_text("utf-8")
        if text.count("\n") > 400:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            assert "lines" in docstring, f"{name} has {text.count(chr(10))} lines and its docstring does not say why"


def test_importing_the_package_loads_no_ml_or_web_framework():
    code = ("import sys, mlmon_middleware, mlmon_middleware.cli; "
            "print(sorted(m for m in ('shap', 'sklearn', 'pandas', 'bentoml', 'fastapi', 'torch', 'xgboost', 'river') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"

"""The layering the design promises, checked on the source: pure logic imports no I/O library,
only the adapters talk to SQL Server, and the flow only composes tasks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "passwords",
    "tsql",
    "durations",
    "params",
    "plan",
    "report",
    "errors",
    "constants",
    "tls",
    "rbac",
    "operator_settings",
    "selectors",
    "workloads",
]
IO_LIBRARIES = {"kubernetes", "pymssql", "prefect", "urllib3", "socket", "subprocess"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io_library(module: str) -> None:
    assert imported_roots(ROOT / "rotation" / f"{module}.py") & IO_LIBRARIES == set()


def test_only_the_sql_adapter_imports_pymssql() -> None:
    users = {
        path.relative_to(ROOT).as_posix()
        for folder in ("rotation", "tasks", "flows")
        for path in (ROOT / folder).glob("*.py")
        if "pymssql" in imported_roots(path)
    }
    assert users == {"rotation/sqlserver.py"}


def test_the_flow_calls_no_client_library_directly() -> None:
    assert imported_roots(ROOT / "flows" / "rotate_auth.py") & {"kubernetes", "pymssql"} == set()


def test_the_product_never_imports_the_sandbox() -> None:
    for folder in ("rotation", "tasks", "flows"):
        for path in (ROOT / folder).glob("*.py"):
            assert "sandbox" not in imported_roots(path), path

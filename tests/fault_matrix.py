"""The reliability matrix, declared by the tests that prove it.

Each fault test carries ``@proves(fault=..., where=..., outcome=...)``. ``docs/reliability.md`` is
rendered from those declarations (``python -m tests.fault_matrix --write``) and a unit test fails when
the committed file differs, so the document can only say what a test checks.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
# Every end-to-end module is imported to collect its @proves (a new module needs no registration).
MODULES = tuple(
    sorted(f"tests.e2e.{path.stem}" for path in (DOC.parent.parent / "tests" / "e2e").glob("test_*.py"))
)

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Row:
    fault: str
    where: str
    outcome: str
    test: str  # module::function


_ROWS: list[Row] = []


def proves(*, fault: str, where: str, outcome: str) -> Callable[[F], F]:
    """Declare the matrix row a test proves."""

    def mark(test: F) -> F:
        module = inspect.getmodule(test)
        path = (module.__name__ if module else "?").replace(".", "/") + ".py"
        _ROWS.append(Row(fault, where, outcome, f"{path}::{getattr(test, '__name__', '?')}"))
        return test

    return mark


def collect() -> list[Row]:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return sorted(set(_ROWS), key=lambda row: (row.test.split("::")[0], _ROWS.index(row)))


def render(rows: list[Row]) -> str:
    lines = [
        "# Reliability matrix",
        "",
        "What was injected, where, what came out, and the test that proves it. Generated from the",
        "tests' `@proves(...)` declarations by `python -m tests.fault_matrix --write`;",
        "`tests/unit/test_reliability_doc.py` fails when this file and the tests disagree.",
        "Every row is a test that runs in CI (the two leak checks run when each test session ends).",
        "",
        "| Fault | Where it is injected | Expected outcome | Test |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.fault, row.where, row.outcome, f"`{row.test}`")
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(DOC.parent.parent)}")
    args = parser.parse_args(argv)
    # Run as a script this module is __main__, while the tests register their rows with
    # tests.fault_matrix: read the rows from that module.
    registry = importlib.import_module("tests.fault_matrix")
    text = registry.render(registry.collect())
    if args.write:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

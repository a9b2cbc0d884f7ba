"""docs/reliability.md is generated from the fault tests' @proves declarations and must match them."""

from __future__ import annotations

from tests.fault_matrix import DOC, collect, render


def test_the_reliability_matrix_in_docs_matches_the_tests_that_prove_it() -> None:
    expected = render(collect())
    assert DOC.read_text() == expected, "run: .venv/bin/python -m tests.fault_matrix --write"


def test_every_row_of_the_matrix_names_an_existing_test() -> None:
    rows = collect()
    assert len(rows) >= 15
    for row in rows:
        path, _, name = row.test.partition("::")
        assert f"def {name}(" in (DOC.parent.parent / path).read_text(), row.test

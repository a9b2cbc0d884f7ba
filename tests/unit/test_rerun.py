"""Pure tests of rotation/rerun.py: a flow run executed again under its own id never rotates twice."""

from __future__ import annotations

import pytest

from rotation.params import RotationRequest
from rotation.rerun import as_rerun


def _request(**overrides: object) -> RotationRequest:
    return RotationRequest.model_validate({"namespace": "demo", "database": "mssql-demo", **overrides})


@pytest.mark.parametrize("run_count", [0, 1])
def test_a_first_attempt_carries_out_the_request_as_asked(run_count: int) -> None:
    request = _request(max_age="30d")

    assert as_rerun(request, run_count) == (request, None)


@pytest.mark.parametrize("run_count", [2, 3])
def test_an_attempt_after_the_first_only_finishes_an_interrupted_rotation_and_says_so(run_count: int) -> None:
    request = _request(auth_secret="my-new-auth", timeout="90s")

    rerun, note = as_rerun(request, run_count)

    assert rerun.finish_only is True and rerun.conditional
    # Nothing else changes: a rotation it finishes is finished as it was asked.
    assert rerun.model_dump(exclude={"finish_only"}) == request.model_dump(exclude={"finish_only"})
    assert note is not None
    assert f"{run_count - 1} earlier attempt(s)" in note and "start a new run" in note


def test_a_recovery_run_is_left_as_it_is() -> None:
    request = _request(finish_only=True)

    assert as_rerun(request, 2) == (request, None)

"""rotation/bridge/runs.py's cause_of: what the bridge tells of a crashed run, from its logs and its
deployment's pull steps (the state message of a crash only says that the process exited)."""

from __future__ import annotations

import logging

from rotation.bridge.runs import CAUSE_MAX, cause_of

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
LOAD_FAILED = """Unexpected exception encountered when trying to load flow
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/prefect/engine.py", line 171, in run
    flow = load_flow(flow_run)
  File "/opt/mssql-auth-rotation/flows/rotate_auth.py", line 3, in <module>
    import rotation
ModuleNotFoundError: No module named 'rotation'
"""
PULL = [{"prefect.deployments.steps.set_working_directory": {"directory": "/home/ci/elsewhere"}}]


def test_a_logged_traceback_gives_its_exception_line_never_its_frames() -> None:
    logs = [(INFO, "Executing deployment step: set_working_directory"), (ERROR, LOAD_FAILED)]

    assert cause_of(logs, PULL) == "the run's error: ModuleNotFoundError: No module named 'rotation'"


def test_a_pull_step_that_never_finished_is_named_with_its_inputs() -> None:
    logs = [
        (INFO, "Running 1 deployment pull step(s)"),
        (INFO, "Executing deployment step: set_working_directory"),
        (WARNING, "Runner failed to retrieve flow\nTraceback (most recent call last):\nFileNotFoundError: x"),
    ]

    assert cause_of(logs, PULL) == (
        "it died in its deployment's pull step set_working_directory (directory: /home/ci/elsewhere), "
        "before the flow started (Prefect leaves that step's error in the worker's log)"
    )
    finished = [*logs[:2], (INFO, "Deployment step 'set_working_directory' completed successfully")]
    assert cause_of(finished, PULL) is None


def test_otherwise_the_last_errors_first_line_and_nothing_is_none() -> None:
    assert cause_of([(ERROR, "first"), (ERROR, "Flow could not start\nmore")], []) == (
        "the run's error: Flow could not start"
    )
    assert cause_of([], []) is None
    assert cause_of([(INFO, "Beginning flow run")], PULL) is None


def test_a_long_cause_is_cut() -> None:
    cause = cause_of([(ERROR, "Traceback (most recent call last):\nValueError: " + "x" * 1000)], [])
    assert cause is not None and len(cause) == CAUSE_MAX and cause.endswith("…")

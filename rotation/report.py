"""KubeDB-style condition bookkeeping for one rotation, and its markdown summary. Pure logic."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from rotation.errors import RotationError
from rotation.workloads import RELOAD_ANNOTATION, WorkloadRestart


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


class Condition(BaseModel):
    type: str
    status: str  # True, False
    message: str
    started_at: datetime
    seconds: float


class RotationReport(BaseModel):
    namespace: str
    database: str
    outcome: str  # Successful or Failed
    auth_secret: str | None
    conditions: list[Condition]
    tls: str | None = None  # how the replicas were reached (encrypted; verified against what)
    # After a successful rotation: each workload restarted for the new credentials, or why not.
    workloads: list[WorkloadRestart] = Field(default_factory=list)
    workload_notes: list[str] = Field(default_factory=list)  # e.g. a refused list of annotated ones

    def markdown(self) -> str:
        lines = [
            f"# RotateAuth {self.namespace}/{self.database}: {self.outcome}",
            "",
            f"Auth secret: `{self.auth_secret or 'unchanged'}`",
            "",
            f"TLS to the replicas: {self.tls or 'not reached (the run stopped before it connected)'}",
            "",
            "| # | Condition | Status | Seconds | Message |",
            "|---|---|---|---:|---|",
        ]
        for number, cond in enumerate(self.conditions, start=1):
            cells = (cond.type, cond.status, f"{cond.seconds:.2f}", cond.message)
            lines.append(f"| {number} | " + " | ".join(_cell(cell) for cell in cells) + " |")
        return "\n".join(lines + self._workload_lines()) + "\n"

    def _workload_lines(self) -> list[str]:
        if not self.workloads and not self.workload_notes:
            return []
        lines = [
            "",
            "## Workloads",
            "",
            "Restarted after the rotation, for applications that read the password when they start "
            f"(annotation `{RELOAD_ANNOTATION}` naming the auth secret, or the `restart_workloads` "
            "parameter):",
            "",
        ]
        if self.workloads:
            lines += ["| Workload | Selected by | Outcome | Message |", "|---|---|---|---|"]
            for item in self.workloads:
                cells = (item.title, ", ".join(item.why), item.outcome, item.message)
                lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        if self.workload_notes:
            lines += [""] if self.workloads else []
            lines += [f"- {_cell(note)}" for note in self.workload_notes]
        return lines


@dataclass
class StepName:
    """The condition a step records; a step may name it once it knows more (``GetPod--<pod>``)."""

    type: str
    message: str


class ConditionLog:
    """Records KubeDB's conditions in order with their timings, like an ops request's status."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[list[Condition]], None] | None = None,
    ) -> None:
        """``on_change`` sees the whole list after each new condition (e.g. to mirror it elsewhere)."""
        self._clock = clock
        self._on_change = on_change
        self.conditions: list[Condition] = []

    def _append(self, condition: Condition) -> None:
        self.conditions.append(condition)
        if self._on_change is not None:
            self._on_change(list(self.conditions))

    def add(self, type_: str, message: str, *, status: str = "True", seconds: float = 0.0) -> None:
        self._append(
            Condition(
                type=type_, status=status, message=message, started_at=datetime.now(UTC), seconds=seconds
            )
        )

    @contextlib.contextmanager
    def step(self, type_: str, message: str) -> Iterator[StepName]:
        """Time the block; on failure record the condition as False with the error's message."""
        started_at, start = datetime.now(UTC), self._clock()
        name = StepName(type_, message)

        def record(status: str, text: str) -> None:
            self._append(
                Condition(
                    type=name.type,
                    status=status,
                    message=text,
                    started_at=started_at,
                    seconds=self._clock() - start,
                )
            )

        try:
            yield name
        except BaseException as exc:
            record("False", str(exc) if isinstance(exc, RotationError) else f"{type(exc).__name__}: {exc}")
            raise
        record("True", name.message)

    def types(self) -> list[str]:
        return [cond.type for cond in self.conditions]

"""Reporting: the Prefect markdown artifact and the failure Event on the MSSQLServer."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from rotation.kube import Kube
from rotation.report import RotationReport
from tasks._policy import RETRYING


def artifact_key(namespace: str, database: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return f"rotate-auth-{namespace}-{database}".replace(".", "-").lower()


@task(name="publish-report", **RETRYING)
def publish_report(report: RotationReport) -> None:
    create_markdown_artifact(
        key=artifact_key(report.namespace, report.database),
        markdown=report.markdown(),
        description=f"RotateAuth {report.namespace}/{report.database}: {report.outcome}",
    )


@task(name="record-failure", **RETRYING)
def record_failure(namespace: str, database: str, message: str) -> None:
    kube = Kube(namespace)
    kube.record_event(kube.get_database(database), "Failed", message, warning=True)

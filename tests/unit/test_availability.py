"""What applications see during a rotation: the load client's arithmetic, the wait for a mounted
secret to reach its pods, and which pods mount the auth secret. Pure logic, no sandbox."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernetes import client

from rotation.durations import remaining_propagation
from rotation.kube import mounts_secret
from sandbox.load_client import Outcome, Sample, summarize

NOW = dt.datetime(2026, 12, 5, 12, 0, 0, tzinfo=dt.UTC)


def samples(*pairs: tuple[float, Outcome]) -> list[Sample]:
    """A write was sent when it succeeded or broke; no primary and a rejected login sent none."""
    return [Sample(at, outcome, outcome in (Outcome.WROTE, Outcome.WRITE_FAILED)) for at, outcome in pairs]


def test_a_window_of_steady_writes_has_no_gap_beyond_the_interval() -> None:
    seen = summarize(samples(*((0.1 * i, Outcome.WROTE) for i in range(1, 100))), 0.0, 10.0)
    assert seen.writes == 99 and seen.failed_logins == seen.failed_writes == 0
    assert seen.no_primary_s == 0.0
    assert seen.longest_gap_s == pytest.approx(0.1)


def test_time_without_a_primary_lasts_from_each_such_sample_to_the_next() -> None:
    seen = summarize(
        samples(
            (1.0, Outcome.WROTE),
            (2.0, Outcome.WRITE_FAILED),  # the connection broke: a failed write
            (2.5, Outcome.NO_PRIMARY),
            (3.0, Outcome.NO_PRIMARY),
            (4.0, Outcome.LOGIN_REJECTED),
            (4.5, Outcome.WROTE),
        ),
        0.0,
        5.0,
    )
    assert seen.no_primary_s == pytest.approx(1.5)
    assert (seen.failed_writes, seen.failed_logins, seen.writes) == (1, 1, 2)
    assert seen.longest_gap_s == pytest.approx(3.5)  # from the write at 1.0 to the one at 4.5


def test_the_longest_gap_counts_from_the_window_edges_and_ignores_samples_outside() -> None:
    seen = summarize(
        samples((-1.0, Outcome.NO_PRIMARY), (0.5, Outcome.WROTE), (9.0, Outcome.NO_PRIMARY)), 0.0, 4.0
    )
    assert seen.writes == 1 and seen.no_primary_s == 0.0
    assert seen.longest_gap_s == pytest.approx(3.5)  # the last write to the end of the window
    empty = summarize([], 0.0, 2.0)
    assert empty.longest_gap_s == 2.0 and empty.writes == 0


@pytest.mark.parametrize(
    ("active_from", "seconds", "left"),
    [
        ("2026-12-05T11:59:55Z", 60.0, 56.0),  # committed 4 to 5 s ago (whole seconds)
        ("2026-12-05T11:58:59Z", 60.0, 0.0),  # 61 s ago at the latest
        ("2026-12-05T11:58:00Z", 60.0, 0.0),  # long ago
        ("2026-12-05T12:00:30Z", 60.0, 60.0),  # a clock ahead never makes the wait longer than the period
        ("2026-12-05T11:59:55Z", 0.0, 0.0),  # propagation waiting off
        (None, 60.0, 60.0),  # commit time unknown: the whole period
        ("yesterday", 60.0, 60.0),
        ("2026-12-05T11:59:55", 60.0, 60.0),  # no zone: unknown
    ],
)
def test_the_wait_for_a_mounted_secret_counts_from_its_commit(
    active_from: str | None, seconds: float, left: float
) -> None:
    assert remaining_propagation(active_from, seconds, NOW) == pytest.approx(left)


def pod(*volumes: client.V1Volume) -> client.V1Pod:
    return client.V1Pod(spec=client.V1PodSpec(containers=[], volumes=list(volumes)))


def test_a_pod_mounts_the_secret_as_a_secret_volume_or_through_a_projected_one() -> None:
    direct = client.V1Volume(name="db", secret=client.V1SecretVolumeSource(secret_name="db-auth"))
    projected = client.V1Volume(
        name="all",
        projected=client.V1ProjectedVolumeSource(
            sources=[
                client.V1VolumeProjection(config_map=client.V1ConfigMapProjection(name="db-auth")),
                client.V1VolumeProjection(secret=client.V1SecretProjection(name="db-auth")),
            ]
        ),
    )
    other = client.V1Volume(name="x", secret=client.V1SecretVolumeSource(secret_name="other"))
    config = client.V1Volume(name="c", config_map=client.V1ConfigMapVolumeSource(name="db-auth"))
    assert mounts_secret(pod(direct), "db-auth")
    assert mounts_secret(pod(other, projected), "db-auth")
    assert not mounts_secret(pod(other, config), "db-auth")  # a ConfigMap of that name is not the secret
    assert not mounts_secret(pod(), "db-auth")

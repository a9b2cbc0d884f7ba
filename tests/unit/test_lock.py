"""tasks/lock.py's arithmetic: the holder's term, the candidate's watch, and what a record's own
renewTime may say (the Lease calls themselves are proved on the sandbox: tests/e2e/test_lock_fencing.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernetes import client

from tasks.lock import (
    MAX_LEASE_S,
    Term,
    call_timeout,
    holder_of,
    observe_seconds,
    renew_deadline,
    renew_interval,
    renewed_recently,
)

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def lease(
    holder: str | None = "run-a", renewed: dt.datetime | None = NOW, duration: int | None = 30
) -> client.V1Lease:
    spec = client.V1LeaseSpec(holder_identity=holder, renew_time=renewed, lease_duration_seconds=duration)
    return client.V1Lease(metadata=client.V1ObjectMeta(name="db-rotate-auth"), spec=spec)


@pytest.mark.parametrize("lease_s", [3, 30, 300])
def test_the_holder_renews_three_times_a_lease_and_stops_a_third_of_a_lease_before_a_takeover(
    lease_s: int,
) -> None:
    assert renew_interval(lease_s) == lease_s / 3
    assert renew_deadline(lease_s) == 2 * lease_s / 3
    # Each Lease call ends within one renew interval, and a failed renewal leaves time for another.
    assert call_timeout(lease_s) <= renew_interval(lease_s)
    assert 2 * call_timeout(lease_s) <= renew_deadline(lease_s)


def test_the_term_runs_from_the_sending_of_the_last_successful_renewal() -> None:
    term = Term(30, acquired_at=100.0)

    assert term.ends_at == 120.0
    assert not term.over(119.99) and term.over(120.0)
    term.renewed(110.0)
    assert term.ends_at == 130.0
    term.renewed(105.0)  # an older request that succeeded late moves nothing back
    assert term.ends_at == 130.0


def test_a_candidate_watches_for_the_longer_duration_but_never_beyond_the_cap() -> None:
    assert observe_seconds(lease(duration=3), ours=30) == 30
    assert observe_seconds(lease(duration=60), ours=30) == 60
    assert observe_seconds(lease(duration=2**31 - 1), ours=30) == MAX_LEASE_S  # a squatter's forever
    assert observe_seconds(lease(duration=None), ours=3) == 3
    no_spec = client.V1Lease(metadata=client.V1ObjectMeta(name="db-rotate-auth"))
    assert observe_seconds(no_spec, ours=3) == 3


@pytest.mark.parametrize(
    ("renewed", "live"),
    [
        (NOW, True),
        (NOW - dt.timedelta(seconds=29), True),
        (NOW - dt.timedelta(seconds=31), False),  # stale by its own clock: watched
        (NOW + dt.timedelta(seconds=29), True),  # a holder whose clock runs ahead
        (NOW + dt.timedelta(seconds=31), False),  # further ahead is not believed
        (dt.datetime(9999, 12, 31, tzinfo=dt.UTC), False),  # would block the database for ever
        (None, False),
    ],
)
def test_a_renew_time_is_believed_only_within_one_lease_of_our_clock(
    renewed: dt.datetime | None, live: bool
) -> None:
    assert renewed_recently(lease(renewed=renewed), NOW, ours=30) is live


def test_a_lease_without_a_holder_is_held_by_nobody() -> None:
    assert holder_of(lease()) == "run-a"
    assert holder_of(lease(holder=None)) is None
    assert holder_of(lease(holder="")) is None
    assert holder_of(client.V1Lease(metadata=client.V1ObjectMeta(name="x"))) is None  # the grant's
    assert holder_of(None) is None

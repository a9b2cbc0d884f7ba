"""TDS 8.0 strict against an on-path attacker, and no password on disk through FreeTDS's debug log.

The attacker is the sandbox's fault switches on each replica's SQL Server: ``downgrade_prelogin``
rewrites the clear-text PRELOGIN answer ON → OFF (one byte; tests/integration/test_tds_tls.py shows
that it puts ALTER LOGIN in clear text for a TDS 7.x client that asked for encryption), and
``refuse_strict`` closes every TLS-first connection, as SQL Server 2019 does, or as an attacker would
who hopes the client falls back to TDS 7.x.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import TlsRefused, UnsafeEnvironment
from rotation.params import TlsVerify
from sandbox.cluster import Database
from sandbox.sqlserver import TlsMode
from tests.e2e.conftest import DatabaseFactory
from tests.fault_matrix import proves
from tests.support import assert_rotated, assert_untouched


def _attack(db: Database, *, downgrade: bool = False, refuse_strict: bool = False) -> None:
    for pod in db.pods:
        faults = db.instance(pod).faults
        faults.downgrade_prelogin, faults.refuse_strict = downgrade, refuse_strict


def _connections_since(db: Database, before: dict[str, int]) -> list[TlsMode]:
    return [
        record.mode
        for pod in db.pods
        for record in db.instance(pod).connections
        if record.connection > before[pod]
    ]


def _last_connection(db: Database, pod: str) -> int:
    records = db.instance(pod).connections
    return records[-1].connection if records else 0


@proves(
    fault="an on-path attacker rewrites every replica's PRELOGIN answer from ENCRYPT_ON to ENCRYPT_OFF",
    where="the TDS PRELOGIN exchange of every connection (sandbox fault downgrade_prelogin)",
    outcome="VerifyFull and VerifyCA speak TDS 8.0 strict (TLS before any TDS byte, ALPN tds/8.0): "
    "nothing to rewrite; the rotation succeeds and no login, batch or password arrives in clear text",
)
@pytest.mark.parametrize("verify", [TlsVerify.VERIFY_FULL, TlsVerify.VERIFY_CA])
def test_a_one_byte_downgrade_reaches_no_password(make_database: DatabaseFactory, verify: TlsVerify) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    before = {pod: _last_connection(db, pod) for pod in db.pods}
    _attack(db, downgrade=True)
    try:
        report = rotate_mssql_auth(namespace=db.namespace, database=db.name, tls_verify=verify)
    finally:
        _attack(db)

    assert report.outcome == "Successful"
    assert report.tls is not None and report.tls.startswith("TDS 8.0 strict TLS")
    modes = _connections_since(db, before)
    assert modes and set(modes) == {TlsMode.STRICT}, modes
    for pod in db.pods:
        state = db.instance(pod)
        assert state.clear_text == [] and not state.alter_login_arrived_unencrypted()
        assert not state.login_arrived_unencrypted()
    assert_rotated(db, original)


@proves(
    fault="the replicas close every TLS-first connection (SQL Server 2019, or an attacker blocking TDS 8.0 "
    "hoping the client falls back to the downgradable TDS 7.x)",
    where="the first bytes of every connection (sandbox fault refuse_strict)",
    outcome="fails closed with TlsRefused saying TDS 8.0 could not be established and why; no fallback, no "
    "LOGIN7 reached any replica, nothing changed",
)
def test_blocked_strict_tls_fails_closed_without_falling_back(make_database: DatabaseFactory) -> None:
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    logins_before = {pod: len(db.instance(pod).logins) for pod in db.pods}
    before = {pod: _last_connection(db, pod) for pod in db.pods}
    _attack(db, refuse_strict=True)
    try:
        refused = r"did not complete a TDS 8.0 \(strict\) TLS connection.*no password"
        with pytest.raises(TlsRefused, match=refused):
            rotate_mssql_auth(namespace=db.namespace, database=db.name)
    finally:
        _attack(db)

    assert set(_connections_since(db, before)) == {TlsMode.REFUSED}  # never a TDS 7.x retry
    assert {pod: len(db.instance(pod).logins) for pod in db.pods} == logins_before
    assert_untouched(db, original)


@proves(
    fault="FreeTDS's debug log is on in the flow's process (TDSDUMP, as a debugging guide might suggest)",
    where="the environment of the process that runs the rotation",
    outcome="refused with UnsafeEnvironment before any connection opens (no LOGIN7 reached a replica), "
    "naming the variable and a debugging command that writes no secret; nothing changed, no dump file",
)
@pytest.mark.parametrize("variable", ["TDSDUMP", "TDSDUMPCONFIG"])
def test_freetds_debug_logging_gets_no_connection(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    db = make_database(replicas=1)
    original = db.secret_data()["password"]
    dump = f"{tmp_path}/freetds.log"
    logins_before = len(db.instance(db.pods[0]).logins)
    monkeypatch.setenv(variable, dump)

    refused = f"{variable} set .*No connection was opened.*openssl s_client"
    with pytest.raises(UnsafeEnvironment, match=refused):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    monkeypatch.delenv(variable)
    assert len(db.instance(db.pods[0]).logins) == logins_before
    assert_untouched(db, original)
    assert not Path(dump).exists()

"""What the rotation trusts over TLS and how it tells FreeTDS: rotation/tls.py (pure) and the
process's freetds.conf (rotation/freetds.py, written into a temporary folder here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from rotation.errors import UnsafeEnvironment
from rotation.freetds import ENV, FreeTdsConfig, refuse_debug_dumps
from rotation.params import TlsVerify
from rotation.tls import TlsProfile, pod_dns_name, section, section_name, server_cert_secret

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
FULL = TlsProfile(verify=TlsVerify.VERIFY_FULL, ca_pem=CA, ca_source="Secret demo/db-server-cert (ca.crt)")


def test_the_pod_name_checked_is_the_one_kubedbs_own_client_dials() -> None:
    assert pod_dns_name("db-0", "db", "demo") == "db-0.db-pods.demo.svc"


def test_the_server_certificate_secret_is_kubedbs_default_or_the_one_spec_tls_names() -> None:
    tls: dict[str, Any] = {"issuerRef": {"name": "ca"}}
    db = {"metadata": {"name": "db"}, "spec": {"tls": tls}}
    assert server_cert_secret(db) == "db-server-cert"
    tls["certificates"] = [{"alias": "server", "secretName": "custom-cert"}]
    assert server_cert_secret(db) == "custom-cert"
    assert server_cert_secret({"metadata": {"name": "db"}, "spec": {}}) is None


def test_verify_full_checks_the_ca_and_the_pods_dns_name_while_connecting_to_its_ip() -> None:
    text = section("s", "10.0.0.7", 1433, "db-0.db-pods.demo.svc", FULL, "/x/ca.pem")
    assert "\thost = 10.0.0.7\n" in text and "\tport = 1433\n" in text
    assert "\tencryption = strict\n" in text and "\tca file = /x/ca.pem\n" in text
    assert "\tcheck certificate hostname = yes\n" in text
    assert "\tcertificate hostname = db-0.db-pods.demo.svc\n" in text


def test_verify_ca_checks_the_ca_only() -> None:
    profile = FULL.model_copy(update={"verify": TlsVerify.VERIFY_CA})
    text = section("s", "10.0.0.7", 1433, "n", profile, "/x/ca.pem")
    assert "\tca file = /x/ca.pem\n" in text and "\tcheck certificate hostname = no\n" in text
    assert "\tencryption = strict\n" in text and "\tcertificate hostname =" not in text


def test_trust_server_certificate_encrypts_without_a_ca() -> None:
    profile = TlsProfile(verify=TlsVerify.TRUST_SERVER_CERTIFICATE)
    text = section("s", "::1", 40000, "n", profile, None)
    assert "\tencryption = require\n" in text and "ca file" not in text
    assert "NOT verified" in profile.describe() and "downgrade" in profile.describe()
    assert not profile.strict


def test_every_verified_mode_is_tds8_strict_and_the_report_says_so() -> None:
    for verify in (TlsVerify.VERIFY_FULL, TlsVerify.VERIFY_CA):
        profile = FULL.model_copy(update={"verify": verify})
        assert profile.strict and profile.describe().startswith("TDS 8.0 strict TLS")


def test_a_verifying_profile_without_a_ca_file_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs a CA file"):
        section("s", "10.0.0.7", 1433, "n", FULL, None)


def test_each_endpoint_and_trust_gets_its_own_section() -> None:
    names = {
        section_name("10.0.0.7", 1433, "a", FULL),
        section_name("10.0.0.8", 1433, "a", FULL),
        section_name("10.0.0.7", 1434, "a", FULL),
        section_name("10.0.0.7", 1433, "b", FULL),
        section_name("10.0.0.7", 1433, "a", FULL.model_copy(update={"ca_pem": CA + "x"})),
    }
    assert len(names) == 5


def test_the_config_file_holds_every_section_and_the_ca_and_is_named_by_freetdsconf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    config = FreeTdsConfig(tmp_path)
    first = config.section_for("10.0.0.7", 1433, "db-0.db-pods.demo.svc", FULL)
    second = config.section_for("10.0.0.8", 1433, "db-1.db-pods.demo.svc", FULL)
    assert config.section_for("10.0.0.7", 1433, "db-0.db-pods.demo.svc", FULL) == first
    assert os.environ[ENV] == str(config.path)
    text = config.path.read_text()
    assert f"[{first}]" in text and f"[{second}]" in text and "[global]" in text
    (ca_file,) = tmp_path.glob("ca-*.pem")
    assert ca_file.read_text() == CA and f"ca file = {ca_file}" in text
    assert ca_file.name == f"ca-{FULL.ca_digest}.pem" and len(FULL.ca_digest) == 64  # the full SHA-256
    assert not list(tmp_path.glob(".*"))  # no half-written file left behind


@pytest.mark.parametrize("variable", ["TDSDUMP", "TDSDUMPCONFIG"])
def test_no_connection_opens_while_freetds_debug_logging_is_on(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "/tmp/freetds.log")
    with pytest.raises(UnsafeEnvironment, match=f"{variable} set .* password included.*openssl s_client"):
        refuse_debug_dumps()
    monkeypatch.delenv(variable)
    refuse_debug_dumps()  # off again: nothing to refuse


def test_an_empty_tdsdump_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDSDUMP", "")  # FreeTDS then logs to its default file
    with pytest.raises(UnsafeEnvironment):
        refuse_debug_dumps()


def test_the_written_config_never_turns_a_dump_file_on(tmp_path: Path) -> None:
    config = FreeTdsConfig(tmp_path)
    config.section_for("10.0.0.7", 1433, "db-0.db-pods.demo.svc", FULL)
    config.section_for("::1", 40000, "n", TlsProfile(verify=TlsVerify.TRUST_SERVER_CERTIFICATE))
    assert "dump" not in config.path.read_text()

"""Certificates and node keys: formats Flower expects, 0600 private keys, nothing overwritten."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.deploy import PartnerPolicy, runner_command, supernode_command, supernode_env
from common.infra.keys import check_partner_name, generate_node_keys, load_node_public_key
from common.errors import ConfigError
from server.certificates import create_ca_and_server_cert


def test_node_keys_are_p384_openssh_and_private_is_0600(tmp_path: Path) -> None:
    private, public = generate_node_keys(tmp_path, "org-a")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_node_public_key(public).startswith("SHA256:")
    with pytest.raises(ConfigError, match="already exists"):
        generate_node_keys(tmp_path, "org-a")


def test_wrong_public_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        load_node_public_key(tmp_path / "junk.pub")
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "p256.pub").write_bytes(p256.public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH))
    with pytest.raises(ConfigError, match="P-384"):
        load_node_public_key(tmp_path / "p256.pub")


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 64, "org/a"])
def test_bad_partner_names(name: str) -> None:
    with pytest.raises(ConfigError):
        check_partner_name(name)


def test_server_certificate_has_the_sans_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    paths = create_ca_and_server_cert(tmp_path, ["coord.example.org", "10.0.0.7"])
    assert paths["ca.key"].stat().st_mode & 0o777 == 0o600
    assert paths["server.key"].stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server.pem"].read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "coord.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.7")}
    with pytest.raises(ConfigError, match="already holds"):
        create_ca_and_server_cert(tmp_path, [])


def test_partner_policy_is_validated_and_goes_into_the_node_config(tmp_path: Path) -> None:
    policy = PartnerPolicy(name="org-a", data=tmp_path / "d.csv", max_epsilon=8.0, delta=1e-5,
                           ledger_dir=tmp_path / "ledger")
    config = policy.node_config()
    assert 'partner-name="org-a"' in config and "max-epsilon=8.0" in config
    for bad in (dict(max_epsilon=0.0), dict(max_epsilon=float("inf")), dict(delta=1.0)):
        with pytest.raises(ConfigError):
            PartnerPolicy(**{**dict(name="org-a", data=tmp_path / "d.csv", max_epsilon=8.0,
                                    delta=1e-5, ledger_dir=tmp_path), **bad})


def test_the_partners_runner_answers_for_a_supernode_in_process_isolation(tmp_path: Path) -> None:
    """`partner start` runs client.runner, which starts the SuperNode: Flower starts no
    ClientApp of its own (process isolation), and the runner gets the partner's approved code."""
    policy = PartnerPolicy(name="org-a", data=tmp_path / "d.csv", max_epsilon=8.0, delta=1e-5,
                           ledger_dir=tmp_path / "ledger", extra=(("allowed-code", "ab,cd"),))
    supernode = supernode_command(policy, "127.0.0.1:9092", None, None, 9101, insecure=True)
    assert supernode[supernode.index("--isolation") + 1] == "process"
    command = runner_command(policy, supernode, 9101)
    assert command[1:4] == ["-P", "-m", "client.runner"]
    assert command[-len(supernode):] == supernode
    assert command[command.index("--address") + 1] == "127.0.0.1:9101"
    assert command[command.index("--allowed-code") + 1] == "ab,cd"
    env = supernode_env({"PATH": "/bin", "FLWR_TELEMETRY_ENABLED": "1"})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["PATH"] == "/bin"

"""The coordinator's certificate authority and TLS server certificate, made with `cryptography`.

Private keys are written 0600 and never overwritten: an existing CA is refused rather than
replaced, since every partner already trusts it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError
from common.infra.storage import atomic_write_bytes

VALID_DAYS = 365


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c in host for c in " /:"):
                raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name")
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def create_ca_and_server_cert(directory: Path, hosts: list[str]) -> dict[str, Path]:
    """Write ca.key, ca.crt, server.key, server.pem into ``directory``; returns their paths."""
    paths = {n: directory / n for n in ("ca.key", "ca.crt", "server.key", "server.pem")}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ConfigError(f"{directory} already holds {existing}; partners trust that CA. "
                          "Use a new directory, or delete it on purpose to start over")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(_name("Consortium coordinator CA")).issuer_name(_name(
                   "Consortium coordinator CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS * 5))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(_name(hosts[0] if hosts else "localhost"))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
                   .add_extension(_san(hosts), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths["ca.key"], _key_pem(ca_key), mode=0o600)
    atomic_write_bytes(paths["ca.crt"], ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(paths["server.key"], _key_pem(server_key), mode=0o600)
    atomic_write_bytes(paths["server.pem"], server_cert.public_bytes(serialization.Encoding.PEM))
    return paths

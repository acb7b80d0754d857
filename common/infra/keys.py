"""A partner's node key pair: EC NIST P-384 in OpenSSH format, as Flower's node auth expects."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import ConfigError
from common.infra.storage import atomic_write_bytes

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_partner_name(name: str) -> str:
    if not NAME.match(name):
        raise ConfigError(f"partner name {name!r}: use letters, digits, '.', '_' or '-' "
                          "(up to 63), starting with a letter or digit")
    return name


def check_private_key_file(path: Path, flag: str) -> None:
    """Refuse a private key that others may read (mode wider than 0600) or that this user
    cannot read, before Flower is started with it (a key mounted into a container, too)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o177:
        raise ConfigError(f"{flag} {path}: mode {mode:04o} is wider than 0600, so others may read "
                          "this private key; run `chmod 600` on it where it is stored")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path}: not readable by this user (uid {os.getuid()}); make "
                          "that user its owner (chown), keeping mode 0600")


def generate_node_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME (private, 0600) and NAME.pub; refuses to overwrite an existing key."""
    check_partner_name(name)
    private, public = directory / name, directory / f"{name}.pub"
    if private.exists() or public.exists():
        raise ConfigError(f"{private} already exists; an enrolled key must not be replaced by "
                          "accident. Pick another directory or name")
    key = ec.generate_private_key(ec.SECP384R1())
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(private, key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()), mode=0o600)
    atomic_write_bytes(public, key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public


def load_node_public_key(path: Path) -> str:
    """Validate an OpenSSH P-384 public key file; returns its SHA-256 fingerprint."""
    try:
        key_type, blob = path.read_bytes().split()[:2]  # drop the trailing comment
        key = serialization.load_ssh_public_key(key_type + b" " + blob)
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an OpenSSH public key ({exc}); create one with "
                          "`consortium partner keygen`") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ConfigError(f"{path}: Flower node auth needs an EC NIST P-384 key "
                          "(ecdsa-sha2-nistp384)")
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()

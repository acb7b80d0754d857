"""The hash a partner approves: SHA-256 over the App's code (every ``.py`` file of its packages
and ``pyproject.toml``), by relative path, so a reviewed checkout and the FAB that `flwr build`
makes of it give the same value (checked against a built FAB). No flwr here."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

from common.errors import ConfigError

PACKAGES = ("client", "common", "server", "simulations")


def code_files(root: Path) -> list[Path]:
    """The files whose content the hash covers, in a fixed order."""
    files = [root / "pyproject.toml"] if (root / "pyproject.toml").is_file() else []
    for package in PACKAGES:
        files.extend(sorted((root / package).rglob("*.py")))
    return [f for f in files if "__pycache__" not in f.parts]


def code_hash(root: str | Path) -> str:
    """SHA-256 of the App's code under ``root`` (a checkout, or the installed FAB)."""
    root = Path(root).resolve()
    files = code_files(root)
    if not any(f.suffix == ".py" for f in files):
        raise ConfigError(f"{root}: no App code here (expected {', '.join(PACKAGES)}/ and "
                          "pyproject.toml); point at a checkout of the App")
    digest = hashlib.sha256()
    for path in files:
        relative = path.relative_to(root).as_posix().encode()
        content = _canonical(path)
        digest.update(len(relative).to_bytes(8, "big") + relative)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def _canonical(path: Path) -> bytes:
    """A file's bytes; pyproject.toml as its parsed TOML, since `flwr build` re-writes its
    layout (not its content) into the FAB."""
    if path.name != "pyproject.toml":
        return path.read_bytes()
    try:
        parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()


def running_code_hash() -> str:
    """The hash of the code this process runs (the FAB the SuperNode installed)."""
    return code_hash(Path(__file__).resolve().parents[1])

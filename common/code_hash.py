"""The hash a partner approves: SHA-256 over every file of the App, by relative path, exactly as
the FAB carries it, so a reviewed checkout and the FAB that `flwr build` makes of it hash alike.

Two kinds of App root, told apart by where they are, never by what they hold:
- an App that Flower installed from a FAB (``$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>``)
  is hashed file by file, whatever it holds: a shadow ``opacus/``, a ``.so``, a ``.pyc``, a data
  file all change the hash;
- a checkout is hashed over the files that `flwr build` would put into its FAB (Flower's own
  include / exclude rules and its ``.gitignore``), with ``pyproject.toml`` read as TOML, since
  `flwr build` re-writes its layout.

Python's own bytecode caches (``__pycache__/<module>.<tag>.pyc``) are left out only when their
code is the code of the hashed source beside them. Compiled code that Python could run and no
reviewed source vouches for is *foreign*: a cache of another code, a cache without its source, a
sourceless ``.pyc`` or an extension module; a partner refuses an App that holds any.

This module is part of the partner's code check (client/pinning.py), which runs before any other
module of the App is imported: standard library only (Flower's rules for a checkout are imported
when a checkout is hashed, never on an installed App).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import json
import marshal
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Callable, Mapping

PYPROJECT = "pyproject.toml"
PACKAGES = ("client", "common", "server", "simulations")
_CACHE = re.compile(r"(?P<stem>[^.]+)\.(?P<tag>.+?)(?:\.opt-(?P<opt>[12]))?\.pyc")
_INSTALLED = re.compile(r".+\.[0-9a-f]{8}")  # Flower: <publisher>.<name>.<version>.<hash[:8]>
_COMPILED = (".pyc", ".pyo", ".pyd", *importlib.machinery.EXTENSION_SUFFIXES)


@dataclass(frozen=True)
class AppCode:
    """What the hash covers in one App root, and the compiled files no hashed source vouches for."""

    sha256: str
    files: tuple[str, ...]  # relative POSIX paths, in the order hashed
    foreign: tuple[str, ...]  # relative POSIX paths of compiled code Python could run instead


def installed_app(root: Path) -> bool:
    """Whether ``root`` is where Flower installs a FAB (``…/apps/<publisher>.<name>.<version>.
    <8 hex>``): a place Flower chooses, so a FAB cannot pass for a checkout."""
    return root.parent.name == "apps" and bool(_INSTALLED.fullmatch(root.name))


def app_code(root: str | Path) -> AppCode:
    """The files the hash covers, their hash, and the foreign compiled files, under ``root``."""
    root = Path(root).resolve()
    if installed_app(root):
        return _installed_code({f: (root / f).read_bytes() for f in _every_file(root)}, root)
    files = _fab_selection(root)
    foreign = [f for f in _compiled_files(root) if not _vouched_for(root, f)]
    return AppCode(_digest(files, lambda f: _canonical(root, f)), tuple(files),
                   tuple(sorted(foreign)))


def fab_code(fab: bytes) -> AppCode:
    """``app_code`` of the App that Flower would install from the FAB ``fab`` (its zip bytes),
    computed in memory: nothing of it is written or imported. Flower installs every file of the
    archive but its ``.info/`` manifest, at its normalized path; a FAB whose paths Flower would
    refuse (outside the App) or that names a file twice is refused here too (ValueError)."""
    import zipfile  # here, not at the top: the App's root is first on the import path there

    contents: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        for member in archive.infolist():
            name = posixpath.normpath(member.filename.replace("\\", "/"))
            if member.is_dir() or name.split("/")[0] == ".info":
                continue
            if name.startswith(("/", "../")) or name in (".", "..") or name in contents:
                raise ValueError(f"the FAB holds {member.filename!r} twice or outside the App")
            contents[name] = archive.read(member)
    return _installed_code(contents)


def _installed_code(contents: Mapping[str, bytes], root: Path | None = None) -> AppCode:
    """The hash of an installed App's files (relative POSIX path -> bytes): every file counts,
    but a bytecode cache whose code is its source's (Python's own). ``root``: where the App is,
    when it is on this process's import path."""
    foreign = [f for f in sorted(contents)
               if f.endswith(_COMPILED) and not _own_cache(contents, f)]
    files = [f for f in sorted(contents) if f in foreign or not f.endswith(_COMPILED)]
    return AppCode(_digest(files, lambda f: _canonical_bytes(f, contents[f], root)),
                   tuple(files),
                   tuple(foreign))


def _digest(files: list[str], content: Callable[[str], bytes]) -> str:
    digest = hashlib.sha256()
    for relative in files:
        name, data = relative.encode(), content(relative)
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def code_hash(root: str | Path) -> str:
    """The hash `consortium partner approve` prints for a checkout (or an installed App);
    ConfigError when ``root`` holds no App, or compiled code that no reviewed source vouches
    for (the FAB would not carry it, but Python could run it from this checkout)."""
    from common.errors import ConfigError  # not needed on the partner's check path

    root = Path(root).resolve()
    if not any((root / p).is_dir() for p in PACKAGES) or not (root / PYPROJECT).is_file():
        raise ConfigError(f"{root}: no App here (expected {', '.join(PACKAGES)}/ and "
                          f"{PYPROJECT}); point at a checkout of the App")
    code = app_code(root)
    if code.foreign:
        raise ConfigError(f"{root} holds compiled Python that no reviewed source vouches for: "
                          f"{', '.join(code.foreign)}; review where it came from, delete it "
                          f"(find {root} -name __pycache__ -prune -exec rm -r {{}} +) and "
                          "approve again")
    return code.sha256


def app_root() -> Path:
    """The root of the App this process runs (the installed FAB, or a checkout)."""
    return Path(__file__).resolve().parents[1]


def running_code_hash() -> str:
    """The hash of the code this process runs (the FAB the SuperNode installed)."""
    return app_code(app_root()).sha256


def _every_file(root: Path) -> list[str]:
    """Every file under ``root``, as relative POSIX paths in a fixed order."""
    found = []
    for directory, subdirs, names in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in names:
            found.append((Path(directory) / name).relative_to(root).as_posix())
    return sorted(found)


def _fab_selection(root: Path) -> list[str]:
    """The files `flwr build` would put into a FAB of the checkout ``root``: Flower's own rules
    (``flwr.cli.build``, via common.wire.fab), reused so that they cannot drift from what a FAB
    carries."""
    from common.wire.fab import fab_paths  # flwr's rules: only for a checkout, never in pinning

    config = _toml(root).loads((root / PYPROJECT).read_text(encoding="utf-8"))
    return sorted({PYPROJECT, *fab_paths(_collect(root), config)})


def _collect(root: Path) -> dict[str, Path]:
    """``flwr.cli.utils.collect_files`` (no symlinks, nothing that resolves outside ``root``)
    without walking the directories Flower's publish rules drop whole (.venv/ and .flwr/ at the
    root, every __pycache__/): a checkout's .venv alone took 4.7 s to walk."""
    files = {}
    for directory, subdirs, names in os.walk(root, followlinks=False):
        here = Path(directory)
        subdirs[:] = [d for d in subdirs if d != "__pycache__"
                      and not (here == root and d in (".venv", ".flwr"))]
        for name in names:
            path = here / name
            if not path.is_symlink() and path.resolve().is_relative_to(root):
                files[path.relative_to(root).as_posix()] = path
    return files


def _compiled_files(root: Path) -> list[str]:
    """Compiled files of a checkout that an import from ``root`` can reach (directories whose
    names are not identifiers, such as .venv or .git, cannot be imported from)."""
    found = []
    for directory, subdirs, names in os.walk(root, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if d.isidentifier())
        found += [(Path(directory) / n).relative_to(root).as_posix() for n in names
                  if n.endswith(_COMPILED)]
    return sorted(found)


def _vouched_for(root: Path, relative: str) -> bool:
    """Whether a compiled file of a checkout is Python's own cache of the source beside it, with
    that source's code, or a cache this interpreter would not load (another interpreter's or
    pytest's, or stale), since Python then compiles the source."""
    path = Path(relative)
    match = _CACHE.fullmatch(path.name)
    if path.parent.name != "__pycache__" or not match:
        return False  # a sourceless .pyc or an extension module: importable as it is
    if match["tag"] != sys.implementation.cache_tag:
        return True
    source = root / path.parent.parent / f"{match['stem']}.py"
    if not source.is_file():
        return False  # a cache of nothing the partner reviewed
    cached = (root / relative).read_bytes()
    return not _loaded_by_python(source, cached) or _same_code(cached, source.read_bytes(),
                                                               match["opt"])


def _own_cache(contents: Mapping[str, bytes], relative: str) -> bool:
    """Whether a compiled file of an installed App is Python's own cache of the source beside
    it, with that source's code: whatever its tag, since the App's files decide what runs."""
    path = PurePosixPath(relative)
    match = _CACHE.fullmatch(path.name)
    if path.parent.name != "__pycache__" or not match:
        return False
    source = (path.parent.parent / f"{match['stem']}.py").as_posix()
    return source in contents and _same_code(contents[relative], contents[source], match["opt"])


def _same_code(cached: bytes, source: bytes, opt: str | None) -> bool:
    """Whether ``cached`` is this interpreter's bytecode of ``source`` at optimization ``opt``."""
    try:
        code = marshal.loads(cached[16:])
        expected = compile(source, "<app>", "exec", dont_inherit=True, optimize=int(opt or 0))
    except (ValueError, EOFError, TypeError, SyntaxError):
        return False
    return cached[:4] == importlib.util.MAGIC_NUMBER and code == expected


def _loaded_by_python(source: Path, cached: bytes) -> bool:
    """Whether this interpreter's importer would run ``cached`` in place of ``source``."""
    if cached[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(cached[4:8], "little"):  # hash-based: run unless checked and changed
        return True
    stat = source.stat()
    return (int.from_bytes(cached[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(cached[12:16], "little") == stat.st_size & 0xFFFFFFFF)


def _canonical(root: Path, relative: str) -> bytes:
    """A checkout's file as the hash reads it (``_canonical_bytes``), its TOML read with
    ``root`` off the import path."""
    return _canonical_bytes(relative, (root / relative).read_bytes(), root)


def _canonical_bytes(relative: str, content: bytes, root: Path | None = None) -> bytes:
    """A file's bytes; pyproject.toml as its parsed TOML without the federations `flwr build`
    drops, since the FAB carries a re-written copy (same content, another layout)."""
    if relative != PYPROJECT:
        return content
    try:
        parsed = _toml(root).loads(content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):  # tomllib.TOMLDecodeError is a ValueError
        return content  # hashed as it is: a FAB with it would not install anyway
    parsed.get("tool", {}).get("flwr", {}).pop("federations", None)
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()


def _toml(root: Path | None) -> ModuleType:
    """The standard library's tomllib, imported with ``root`` off the import path: a
    ``tomllib.py`` of the App must not stand in for it while the App is being checked."""
    if "tomllib" in sys.modules:
        return sys.modules["tomllib"]
    saved = list(sys.path)
    sys.path[:] = [p for p in saved
                   if root is None or not Path(p or ".").resolve().is_relative_to(root)]
    try:
        import tomllib
    finally:
        sys.path[:] = saved
    return tomllib

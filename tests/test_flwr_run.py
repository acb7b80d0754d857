"""The App as `flwr run` gets it: a staged copy whose FAB is byte for byte the FAB Flower builds
from the checkout itself, without walking the checkout's virtual environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from server.flwr_run import APP_DIR, staged_app


def _tree(root: Path, gitignore: str) -> Path:
    files = {
        "pyproject.toml": (APP_DIR / "pyproject.toml").read_text(),
        ".gitignore": gitignore,
        "README.md": "# app\n",
        "pkg/app.py": "X = 1\n",
        "pkg/data.json": "{}\n",
        "pkg/__pycache__/app.cpython-311.pyc": "",
        "pkg/sub/deep.py": "Y = 2\n",
        ".venv/lib/site.py": "Z = 3\n",
        ".flwr/config.toml": "",
        "results/run.json": "{}\n",
        "results/keep.json": "{}\n",
        "notes/plan.md": "plan\n",
        "build/out.py": "W = 4\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    os.symlink(root / "pkg" / "app.py", root / "pkg" / "link.py")
    os.symlink(root / "pkg", root / "linked-pkg")
    return root


@pytest.mark.parametrize("gitignore", [
    "results/\nbuild\n*.egg-info/\n",
    "results/\n!results/keep.json\n",  # a negation: nothing is pruned by .gitignore
    "",
])
def test_staged_app_builds_the_same_fab(tmp_path: Path, gitignore: str) -> None:
    app = _tree(tmp_path / "app", gitignore)
    staged = staged_app(tmp_path / "staged", app)
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
    assert not (staged / ".venv").exists() and not (staged / "pkg" / "__pycache__").exists()
    assert not (staged / "pkg" / "link.py").exists()
    assert (staged / "results").exists() == ("!results/keep.json" in gitignore or not gitignore)


def test_staged_checkout_builds_the_checkouts_fab(tmp_path: Path) -> None:
    """The App itself (its .venv, where the README installs it, walked by the slow side)."""
    assert build_fab_from_disk(staged_app(tmp_path / "app")) == build_fab_from_disk(APP_DIR)

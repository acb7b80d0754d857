"""The project's packages are the ones imported, and the App is declared for `flwr run`."""

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("package", ["common", "client", "server", "simulations"])
def test_packages_import_from_this_checkout(package: str) -> None:
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == ROOT / package


def test_flower_app_components_resolve() -> None:
    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "components"]
    for ref in components.values():
        module, attr = ref.split(":")
        assert getattr(importlib.import_module(module), attr) is not None

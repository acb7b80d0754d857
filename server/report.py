"""`consortium report RUN_DIR`: one self-contained report.html (figures embedded as base64 PNG,
no external URL, opens offline) and the PNGs beside it.

Everything is read and rendered in memory first; only then are the files written, each
atomically, report.html last — a bad input leaves nothing half-written.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from common.config import RunConfig
from common.infra.storage import atomic_write_bytes
from server.evaluation import extremes, megabytes
from server.report_text import budget_of, privacy_summary, table
from server.run_data import METRICS_FILE, RunData, RunSeries, load_run, series

logger = logging.getLogger(__name__)
REPORT_FILE = "report.html"

CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:.5em 0 1.2em}.note{color:#555;font-size:.92em}
.bad{color:#b00020;font-weight:bold}"""


def _final_section(data: RunData, s: RunSeries) -> str:
    last = data.lines[-1]
    per = last.get("eval_per_partner") or {}
    ends = extremes({name: p.get(s.metric) for name, p in per.items()})
    worst, best = ends["eval_worst"] or {}, ends["eval_best"] or {}
    rows = [["mean over partners (weighted by examples)", s.mean[-1]],
            [f"worst partner ({worst.get('partner', 'n/a')})", s.worst[-1]],
            [f"best partner ({best.get('partner', 'n/a')})", best.get("value")],
            ["fairness gap (best − worst)", s.gap[-1]]]
    own = last.get("eval_coordinator")
    if isinstance(own, Mapping):
        rows.append([f"coordinator's own set ({own.get('source')}, {own.get('num_examples')} "
                     "examples; not in the mean)", s.coordinator[-1]])
    keys = sorted({k for p in per.values() for k in p if k != "num_examples"})
    partner_rows = [[name, p.get("num_examples"), *[p.get(k) for k in keys]]
                    for name, p in sorted(per.items())]
    return (f"<h2>Final round ({last['round']}): does the model work for every partner?</h2>"
            + table([s.metric.replace("_", " "), "value"], rows)
            + table(["partner", "held-out examples", *[k.replace("_", " ") for k in keys]],
                    partner_rows))


def per_class_section(line: Mapping[str, Any]) -> str:
    per_class = line.get("eval_per_class")
    if not per_class:
        return ("<h2>Per class</h2><p class='note'>Not recorded: this run's partners did not "
                "report per-class counts.</p>")
    rows = [[label, c.get("precision"), c.get("recall"), c.get("f1"), int(c.get("support") or 0)]
            for label, c in per_class.items()]
    return ("<h2>Per class, final model</h2><p class='note'>Pooled over partners: each partner "
            "sent only its counts of true positives, false positives and false negatives per "
            "class; the coordinator summed them. n/a = no prediction or no example of the "
            "class.</p>" + table(["class", "precision", "recall", "F1", "support"], rows))


def group_section(line: Mapping[str, Any]) -> str:
    """Scores per group of people inside the partners (their group column), pooled, with the
    worst group and the gap next to the per-partner ones; empty when no partner had groups."""
    groups = line.get("eval_groups")
    if not groups:
        return ""
    rows = [[g, v.get("accuracy"), int(v.get("examples") or 0)] for g, v in groups.items()]
    worst, best = line.get("eval_group_worst") or {}, line.get("eval_group_best") or {}
    rows += [[f"worst group ({worst.get('group', 'n/a')})", worst.get("value"), ""],
             [f"best group ({best.get('group', 'n/a')})", best.get("value"), ""],
             ["group gap (best − worst)", line.get("eval_group_gap"), ""],
             ["partner gap (best − worst), for comparison", line.get("eval_gap"), ""]]
    return ("<h2>Per group of people, final model</h2><p class='note'>Each partner scored its "
            "held-out split per value of its own group column and sent counts only; a group with "
            "fewer examples than min-group-size at a partner was left out there (and, if the "
            "partner's totals would reveal it, the next smallest group too). The coordinator "
            "summed the counts.</p>" + table(["group", "accuracy", "examples"], rows))


def _failures_section(lines: list[dict[str, Any]]) -> str:
    rows = [[line["round"], phase, f.get("partner"), f.get("reason")]
            for line in lines for phase, key in (("train", "failures"), ("eval", "eval_failures"))
            for f in (line.get(key) or []) if isinstance(f, Mapping)]
    if not rows:
        return ""
    return ("<h2>Partners that failed, refused or stayed silent</h2>"
            + table(["round", "phase", "partner", "reason"], rows))


FIGURES = [
    ("report_metric.png", "Held-out {metric} per round: the weighted mean (black), the worst "
                          "partner (red, dashed) and each partner."),
    ("report_epsilon.png", "Cumulative ε each partner has spent after each round, against the "
                           "run's budget (red, dashed). ε only grows."),
    ("report_loss.png", "Training loss (at the partners, under DP noise) and held-out loss."),
    ("report_bytes.png", "Megabytes sent each round: the shared model to every partner (one "
                         "train Message each; the last round adds the final evaluate), the "
                         "partners' updates back."),
]


def _total_mb(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return megabytes(sum(finite)) if finite else "n/a (not recorded)"


def render_html(data: RunData, s: RunSeries, images: Mapping[str, bytes]) -> str:
    config = data.config or {}
    metric = s.metric.replace("_", " ")
    figures = "".join(
        f"<img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(images[name]).decode()}'>"
        f"<p class='note'>{html.escape(caption.format(metric=metric))}</p>"
        for name, caption in FIGURES)
    overview = table(["", ""], [
        ["run directory", str(data.run_dir)], ["rounds", len(data.lines)],
        ["partners", len(s.per_partner)],
        ["task", config.get("task", "text-classification")],
        ["base model", config.get("base-model") or "bundled all-MiniLM-L6-v2"],
        ["fine-tuning", config.get("finetune", "n/a")],
        ["aggregation", config.get("aggregation", "n/a")],
        ["total sent", f"{_total_mb(s.download)} to partners, {_total_mb(s.upload)} back"]])
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Consortium run report: {html.escape(data.run_dir.name)}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<h1>Consortium run report: {html.escape(data.run_dir.name)}</h1>{overview}"
            + _final_section(data, s) + "<h2>Over the rounds</h2>" + figures
            + per_class_section(data.lines[-1]) + group_section(data.lines[-1])
            + privacy_summary(data, s)
            + _failures_section(data.lines) + "</body></html>\n")


def write_report(run_dir: str | Path, config: RunConfig | None = None) -> Path:
    """Read the run, render every figure and the page, then write them; returns report.html."""
    return _write(load_run(Path(run_dir), config.to_mapping() if config is not None else None))


def write_live_report(run_dir: Path, config: RunConfig, pending: Mapping[str, Any],
                      privacy: Mapping[str, Any]) -> Path | None:
    """The report so far, rewritten after every round: the lines written, plus the round just
    checkpointed (``pending``: its partners' evaluations arrive with the next round, so its
    held-out figures are the coordinator's own set only). Best effort: a failure is logged and
    the last good report stays; None then."""
    try:
        written = load_run(run_dir, config.to_mapping()).lines \
            if (run_dir / METRICS_FILE).exists() else []
        return _write(RunData(run_dir, [*written, dict(pending)], dict(privacy),
                              config.to_mapping()))
    except Exception:  # noqa: BLE001 - the run goes on; the next round tries again
        logger.warning("the live report of %s could not be written (the last good one stays)",
                       run_dir, exc_info=True)
        return None


def _write(data: RunData) -> Path:
    from server.plots import render_all  # matplotlib: imported when a report is drawn

    s = series(data.lines)
    images = render_all(s, budget_of(data.config))
    page = render_html(data, s, images)
    for name, png in images.items():
        atomic_write_bytes(data.run_dir / name, png)
    path = data.run_dir / REPORT_FILE
    atomic_write_bytes(path, page.encode("utf-8"))
    logger.info("run report written to %s", path)
    return path

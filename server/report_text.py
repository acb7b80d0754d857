"""The report's plain-language section for a partner's privacy officer: what stayed where, what
was sent, what ε and δ mean, and each partner's numbers — all from the run's own files."""

from __future__ import annotations

import html
import math
from typing import Any, Mapping

from server.evaluation import megabytes
from server.run_data import RunData, RunSeries


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if isinstance(value, float) and value != 0 and abs(value) < 10 ** -(digits - 1):
        return f"{value:.3g}"  # δ = 1e-05, not 0.0000
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if any(header) else ''}{body}</table>"


def budget_of(config: Mapping[str, Any] | None) -> float | None:
    if not config or not config.get("dp", True) or config.get("epsilon") is None:
        return None
    return float(config["epsilon"])


def _partner_rows(partners: Mapping[str, Mapping[str, Any]],
                  budget: float | None) -> list[list[Any]]:
    rows = []
    for name, p in sorted(partners.items()):
        eps = p.get("epsilon")
        within = ("n/a" if budget is None or eps is None
                  else "yes" if eps <= budget * (1 + 1e-9) else "NO")
        unit = f"a person ({p.get('persons')} persons)" if p.get("unit") == "person" \
            else "an example"
        rows.append([name, eps, unit, p.get("delta"), p.get("noise_multiplier"),
                     p.get("sample_rate"), p.get("steps"), p.get("rounds_trained"), within])
    return rows


def _meaning(dp: bool, budget: float | None, delta: Any, persons: bool = False) -> str:
    if not dp:
        return ("<p class='bad'>This run did not use differential privacy (ε = ∞). The updates "
                "partners sent carry no formal privacy guarantee; treat the shared model like "
                "any model trained on the data.</p>")
    target = (f" The run's target was ε = {budget:g} per partner; a partner's own budget (its "
              "policy's max-epsilon, over all runs on its data) is its own limit, drawn in the "
              "ε chart where the partner told it." if budget is not None else "")
    return (
        "<p><b>What ε (epsilon) means.</b> Each partner trained with DP-SGD: every example's "
        "influence on each step was capped (clipped) and random noise was added. ε bounds how "
        "much any <i>single example</i> of a partner's data can change anything anyone sees "
        "afterwards — the updates, the shared model, its predictions: with or without that "
        "example, the probability of any outcome differs by at most a factor e<sup>ε</sup>. "
        "Smaller is stronger: ε ≤ 1 is strong, 1–10 is the range most deployments use; ε "
        f"adds up over rounds and runs on the same data, and is tracked by each partner.{target}"
        "</p><p><b>What δ (delta) means.</b> The small probability, here "
        f"{html.escape(str(delta))}, that the ε bound does not hold; it is set below 1 / (the "
        "partner's number of examples).</p>"
        + ("<p><b>Per person.</b> Where the table says ε protects a person, DP-SGD sampled "
           "persons and clipped each person's gradient over all its rows as one unit: ε bounds "
           "what anyone learns about a person, whatever number of rows they have.</p>"
           if persons else "") +
        "<p><b>What it does not cover.</b> Where ε protects an example, it is per example, not "
        "per person (a person with k examples is protected at about k·ε), and nowhere is it "
        "for a partner as a whole. The "
        "evaluation numbers partners send (accuracy, loss, per-class counts on their held-out "
        "split) are not noised; they are aggregate counts, never examples.</p>")


def privacy_summary(data: RunData, s: RunSeries) -> str:
    """The 'for your privacy officer' section as HTML."""
    config = data.config or {}
    dp = bool(config.get("dp", True))
    budget = budget_of(config)
    partners = (data.privacy or {}).get("partners") or {}
    sent_up = sum(v for v in s.upload if math.isfinite(v))
    stayed = (
        "<h2>For your privacy officer</h2>"
        "<p><b>What stayed where.</b> Every partner's texts and labels stayed on that partner's "
        "own machine; training and evaluation ran there. The coordinator never received an "
        "example, a text or a label of any partner.</p>"
        "<p><b>What was sent.</b> To partners: the shared model's trainable weights, each "
        "round. From partners: a change to those weights (the update, clipped to an L2 norm of "
        f"{html.escape(str(config.get('update-clip-norm', 'n/a')))}"
        f"{' after DP-SGD' if dp else ''}) — {megabytes(sent_up)} over the run in all — plus "
        "a few numbers: how many examples were used, training and held-out loss, held-out "
        "accuracy, per-class counts of right and wrong predictions on the held-out split, and "
        "the privacy spending (σ, sampling rate, steps) from which ε is computed.</p>")
    if partners:
        privacy = table(["partner", "ε", "ε protects", "δ", "noise σ", "sampling rate q", "steps",
                         "rounds trained", "within the run's target"], _partner_rows(partners, budget))
        source = ("<p class='note'>From privacy_report.json: ε computed with Opacus' RDP "
                  "accountant from each partner's own ledger of (σ, q, steps), cumulative over "
                  "every round it trained.</p>")
    else:
        privacy = ""
        source = ("<p class='note'>privacy_report.json is missing (the run has not finished); "
                  "the ε figure above shows what the partners reported per round.</p>")
    delta = next((p.get("delta") for p in partners.values()), config.get("delta", "n/a"))
    persons = any(p.get("unit") == "person" for p in partners.values())
    return stayed + _meaning(dp, budget, delta, persons) + privacy + source

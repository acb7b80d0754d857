"""The run report's figures, rendered to PNG bytes in memory (matplotlib's Agg canvas, no
pyplot state, no display), so the report writes them only once every one has rendered."""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from server.run_data import RunSeries

DPI = 100
SIZE = (8.5, 3.6)  # inches, with the legend on the right


def _figure(title: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    return fig, ax


def _legend(ax: Any) -> None:
    """Beside the axes, never over the lines."""
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _label(metric: str) -> str:
    return {"accuracy": "accuracy", "entity_f1": "entity F1"}.get(metric, metric.replace("_", " "))


def metric_plot(s: RunSeries) -> bytes:
    """The main metric per round: the weighted mean, the worst partner and each partner."""
    fig, ax = _figure(f"{_label(s.metric)} per round (held-out split of each partner)",
                      _label(s.metric))
    for name, values in sorted(s.per_partner.items()):
        ax.plot(s.rounds, values, marker=".", linewidth=1, alpha=0.6, label=name)
    ax.plot(s.rounds, s.mean, marker="o", linewidth=2.5, color="black",
            label="mean (weighted by examples)")
    ax.plot(s.rounds, s.worst, marker="v", linewidth=2, linestyle="--", color="crimson",
            label="worst partner")
    if any(math.isfinite(v) for v in s.coordinator):
        ax.plot(s.rounds, s.coordinator, marker="D", linewidth=2, linestyle=":",
                color="darkgreen", label="coordinator's own set")
    _legend(ax)
    return _png(fig)


def limit_lines(s: RunSeries, target: float | None) -> list[tuple[str | None, float, str]]:
    """The ε chart's horizontal lines: (partner or None for the run's, value, label). Each
    partner's own budget where its replies told it; the run's target ε otherwise."""
    lines: list[tuple[str | None, float, str]] = [
        (name, value, f"{name}'s budget ε = {value:g}")
        for name, value in sorted(s.budgets.items()) if math.isfinite(value)]
    if target is not None and math.isfinite(target):
        lines.append((None, target, f"run's target ε = {target:g}"))
    return lines


def epsilon_plot(s: RunSeries, budget: float | None) -> bytes:
    """Cumulative ε per partner per round, against each partner's own budget (where told) and
    the run's target ε."""
    fig, ax = _figure("privacy spent: cumulative ε per partner", "ε")
    colours = {}
    for name, values in sorted(s.epsilon.items()):
        colours[name] = ax.plot(s.rounds, values, marker="o", label=name)[0].get_color()
    finite = [v for values in s.epsilon.values() for v in values if math.isfinite(v)]
    for name, value, label in limit_lines(s, budget):
        ax.axhline(value, color=colours.get(name, "crimson") if name else "crimson",
                   linestyle=":" if name else "--", label=label)
        finite.append(value)
    if finite:
        ax.set_ylim(0, max(finite) * 1.15 or 1.0)
    if not any(math.isfinite(v) for values in s.epsilon.values() for v in values):
        ax.text(0.5, 0.5, "no differential privacy in this run (ε = ∞)",
                transform=ax.transAxes, ha="center", va="center")
    _legend(ax)
    return _png(fig)


def loss_plot(s: RunSeries) -> bytes:
    fig, ax = _figure("loss per round", "cross-entropy")
    ax.plot(s.rounds, s.train_loss, marker="o", label="training (mean over partners)")
    ax.plot(s.rounds, s.eval_loss, marker="s", label="held-out (weighted by examples)")
    _legend(ax)
    return _png(fig)


def bytes_plot(s: RunSeries) -> bytes:
    """Megabytes sent per round: the shared model to partners, their updates back."""
    fig, ax = _figure("bytes sent per round", "MB")
    width = 0.38
    down = [v / 1e6 for v in s.download]
    up = [v / 1e6 for v in s.upload]
    ax.bar([r - width / 2 for r in s.rounds], down, width, label="coordinator → partners")
    ax.bar([r + width / 2 for r in s.rounds], up, width, label="partners → coordinator")
    ax.set_xticks(s.rounds)
    if not any(math.isfinite(v) for v in down + up):
        ax.text(0.5, 0.5, "not recorded in this run's metrics.jsonl", transform=ax.transAxes,
                ha="center", va="center")
    _legend(ax)
    return _png(fig)


def render_all(s: RunSeries, budget: float | None) -> dict[str, bytes]:
    """Every figure of the report, file name -> PNG bytes."""
    return {"report_metric.png": metric_plot(s), "report_epsilon.png": epsilon_plot(s, budget),
            "report_loss.png": loss_plot(s), "report_bytes.png": bytes_plot(s)}

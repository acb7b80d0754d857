"""monitoring.md: a monitoring run's summary in words and one table, with the section "Drift
since release" that names every flagged partner (read from server.monitoring's summary)."""

from __future__ import annotations

import math
from typing import Any, Mapping

SUMMARY_JSON, SUMMARY_TEXT = "monitoring.json", "monitoring.md"  # in the monitoring run's OUT


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def flagged_lines(summary: Mapping[str, Any]) -> list[str]:
    """One sentence per flagged partner, or one saying no partner drifted."""
    metric, threshold = summary["metric"], summary["drift_threshold"]
    rows = summary["partners"]
    if not summary["flagged"]:
        return [f"No partner's {metric} fell by more than {threshold:g} since the release."]
    return [f"- **Drift: {name}**: {metric} {_num(rows[name]['at_release'])} at release, "
            f"{_num(rows[name]['now'])} now (drop {_num(rows[name]['drop'])} > {threshold:g})"
            for name in summary["flagged"]]


def drift_text(summary: Mapping[str, Any]) -> str:
    """The whole monitoring.md."""
    metric = summary["metric"]
    lines = [f"# Monitoring: release {summary['release_id']}", "",
             f"- Release: `{summary['release']}`; at release = each partner's held-out "
             f"{metric} after round {summary['baseline_round']} (mean "
             f"{_num(summary['baseline_mean'])})",
             "- Now = each partner's own monitoring data, scored at the partner; only counts "
             "came back", f"- History of this release: `{summary['history']['file']}` "
             f"({summary['history']['runs']} monitoring run(s))", "",
             "## Drift since release", "", *flagged_lines(summary), "",
             f"| partner | examples | {metric} at release | now | drop | drift |",
             "|---|---|---|---|---|---|"]
    for name, row in summary["partners"].items():
        note = "yes" if row["drift"] else ("not in the release's evaluation"
                                           if not row["in_baseline"] else "no")
        lines.append(f"| {name} | {row['examples']} | {_num(row['at_release'])} | "
                     f"{_num(row['now'])} | {_num(row['drop'])} | {note} |")
    for title, entries in (("Refused", summary["refused"]), ("No report", summary["failures"])):
        if entries:
            lines += ["", f"{title}:", *(f"- {e['partner']}: {e['reason']}" for e in entries)]
    return "\n".join(lines) + "\n"

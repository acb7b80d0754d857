"""Benchmark: recall of the partner-side PII masker (common.deid.deidentify) on synthetic notes.

    python -m benchmarks.deid [--notes 300] [--thresholds 0.4,0.2] [--seed 0]

Masks a seeded set of synthetic clinical and bank notes with planted personal data
(benchmarks/pii_notes.py) and the PII-free sentences listed there, once per score threshold (an
arm). A gold span is caught when the masked note no longer contains it; it is fully masked when
none of its words (runs of letters or digits, 2+ long) is left in the note either (an address whose
street is masked but whose city is not is caught, not fully masked). Names are split into those
whose every part is on the masker's name list and those with no part on it, the latter again by
whether a title (Dr., Ms.) stands before them. A false mask is a span masked in a PII-free sentence
(29 plain ones, 31 that start with a word that is also a listed name: "Frank blood in the bag").
Writes benchmarks/results/deid.json (--json) and prints a table; a CPU run takes ~10 s.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Arm, Column
from benchmarks.pii_notes import NAME_WORD_SENTENCES, PLAIN_SENTENCES, Note, Span, notes
from common.infra.logs import configure_logging

RESULTS = Path(__file__).resolve().parent / "results" / "deid.json"
PACKAGES = ("presidio-analyzer", "presidio-anonymizer", "spacy", "faker", "tldextract")
EXAMPLES_PER_KIND = 3


def kind_of(span: Span, text: str, listed: set[str]) -> str:
    """The row a gold span is scored under: its type; names split by the name list, and names
    off the list by whether a title (Dr., Ms., ...) stands before them in ``text``."""
    if span.kind != "PERSON":
        return span.kind
    if all(part in listed for part in re.findall(r"[^\W\d_]+", span.value)):
        return "PERSON (listed)"
    titled = re.search(r"\b(?:Dr|Mr|Mrs|Ms)\.?\s+$", text[:text.find(span.value)])
    return "PERSON (unlisted, after a title)" if titled else "PERSON (unlisted)"


def fully_masked(value: str, masked: str) -> bool:
    words = [w for w in re.findall(r"[^\W_]+", value) if len(w) >= 2]
    return not any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", masked) for w in words)


def score(gold: list[Note], masked: tuple[str, ...], listed: set[str]) -> dict[str, Any]:
    """Per kind: spans, caught, fully masked, and a few misses (synthetic values) to look at."""
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    misses: dict[str, list[dict[str, str]]] = defaultdict(list)
    partial: dict[str, list[dict[str, str]]] = defaultdict(list)
    for note, out in zip(gold, masked):
        for span in note.spans:
            kind = kind_of(span, note.text, listed)
            caught, full = span.value not in out, fully_masked(span.value, out)
            rows[kind].update(spans=1, caught=int(caught), full=int(full))
            examples = misses if not caught else partial if not full else None
            if examples is not None and len(examples[kind]) < EXAMPLES_PER_KIND:
                examples[kind].append({"value": span.value, "masked_note": out})
    kinds = {k: {"spans": c["spans"], "caught": c["caught"], "recall": c["caught"] / c["spans"],
                 "fully_masked": c["full"] / c["spans"]} for k, c in sorted(rows.items())}
    total = sum(c["spans"] for c in rows.values())
    return {"kinds": kinds, "misses": dict(sorted(misses.items())),
            "partly_masked": dict(sorted(partial.items())), "spans": total,
            "recall": sum(c["caught"] for c in rows.values()) / total,
            "fully_masked": sum(c["full"] for c in rows.values()) / total}


def measure(arm: Arm, gold: list[Note]) -> dict[str, Any]:
    started = time.perf_counter()  # from the imports on: what a partner process pays once
    from common.deid.recognizers import person_names
    from common.deid.deidentify import Deidentifier

    deid = Deidentifier(score_threshold=arm.settings["score_threshold"])
    loaded = time.perf_counter()
    masked, counts = deid.mask([n.text for n in gold])
    masked_at = time.perf_counter()
    result = score(gold, masked, set(person_names()))
    return {**arm.settings, **result, "masked_per_type": counts,
            "false_masks": {"name_word_start": false_masks(deid, NAME_WORD_SENTENCES),
                            "plain": false_masks(deid, PLAIN_SENTENCES)},
            "load_seconds": loaded - started, "mask_seconds": masked_at - loaded,
            "notes_per_second": len(gold) / (masked_at - loaded)}


def false_masks(deid: Any, sentences: tuple[str, ...]) -> dict[str, Any]:
    """Spans masked in sentences that hold no personal data, and those sentences, masked."""
    clean, counts = deid.mask(sentences)
    return {"sentences": len(sentences), "spans": sum(counts.values()), "per_type": counts,
            "sentences_hit": sum(a != b for a, b in zip(sentences, clean)),
            "examples": [b for a, b in zip(sentences, clean) if a != b]}


def print_tables(body: dict[str, Any]) -> None:
    arms = body["arms"]
    kinds = sorted({k for a in arms.values() for k in a["kinds"]})
    rows = [{"kind": k, **{f"{n} recall": arms[n]["kinds"][k]["recall"] for n in arms},
             **{f"{n} full": arms[n]["kinds"][k]["fully_masked"] for n in arms},
             "spans": next(iter(arms.values()))["kinds"][k]["spans"]} for k in kinds]
    rows.append({"kind": "overall", "spans": next(iter(arms.values()))["spans"],
                 **{f"{n} recall": a["recall"] for n, a in arms.items()},
                 **{f"{n} full": a["fully_masked"] for n, a in arms.items()}})
    print("\n" + harness.table(rows, [Column("kind", "kind"), Column("spans", "spans"),
                                      *[Column(f"{n} recall", f"{n} recall", ".3f") for n in arms],
                                      *[Column(f"{n} fully masked", f"{n} full", ".3f")
                                        for n in arms]]))
    print("\n" + harness.table([{"arm": n, **a} for n, a in arms.items()], [
        Column("arm", "arm"),
        *[Column(f"false masks, {group}", lambda a, g=group: f"{a['false_masks'][g]['spans']} "
                 f"in {a['false_masks'][g]['sentences_hit']}/{a['false_masks'][g]['sentences']}")
          for group in ("plain", "name_word_start")],
        Column("notes/s", "notes_per_second", ".0f"), Column("load s", "load_seconds", ".1f")]))


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--notes", type=int, default=300, help="synthetic notes (default 300)")
    parser.add_argument("--thresholds", default="0.4,0.2",
                        help="comma-separated Presidio score thresholds, one arm each; the "
                             "first is the masker's default (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    configure_logging()
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    gold = notes(args.notes, args.seed)
    head = harness.header("benchmarks.deid", packages=PACKAGES)
    config = {"notes": args.notes, "seed": args.seed, "gold_spans": sum(len(n.spans) for n in gold)}
    arms = [Arm(f"threshold_{t:g}", {"score_threshold": t}) for t in thresholds]
    results = harness.run_arms(
        arms, lambda arm: {"arm": arm.name, **measure(arm, gold)},
        save=lambda done: harness.write_json(args.json, {**head, "config": config,
                                                         "arms": done}))
    print_tables({"arms": results})
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

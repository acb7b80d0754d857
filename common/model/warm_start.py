"""A warm start on public data: the base-model directory `consortium warm-start` writes, its
lineage, and the check that the public rows are not a run's private ones.

The warm start adapts the encoder on data that is public (no partner's row), so it spends no ε:
DP protects the records of the partners' data sets, and none of them is used. A partner accepts
the warm-started directory exactly as any base model: through its ``allowed-base-models`` and the
frozen-weight fingerprint every round checks.

The directory holds ``save_pretrained`` of the encoder and its tokenizer (any code that takes a
base model takes it), ``warm_start.json`` (the lineage: every public file with its SHA-256 and
rows, the objective, epochs and seconds), ``public_rows.txt`` (a digest per public row, so a run
can refuse private data that overlaps it) and a ``README.md`` model card.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from common.errors import ConfigError, DataError

LINEAGE_FILE = "warm_start.json"
ROWS_FILE = "public_rows.txt"
FORMAT = 1
OBJECTIVES = ("supervised", "simcse", "mlm")
PRIVACY_NOTE = ("The warm start used only the public files listed, never a partner's row, so it "
                "spends no ε: each partner's (ε, δ) covers its own data, which the warm start "
                "never saw. The guarantee says nothing about the public files themselves.")


@dataclass(frozen=True)
class PublicFile:
    """One public file of a warm start, as its lineage names it."""

    path: str
    sha256: str
    rows: int


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_text(text: Any) -> str:
    """A row's text as the overlap check compares it: a word list joined, spaces collapsed,
    case folded (so a re-cased or re-spaced copy of a row is still the same row)."""
    words = text if isinstance(text, (list, tuple)) else str(text).split()
    return " ".join(str(w) for w in words).casefold()


def row_digest(text: Any) -> str:
    """The first 16 hex digits of a row's SHA-256 (64 bits: no chance collision here)."""
    return hashlib.sha256(row_text(text).encode()).hexdigest()[:16]


def row_digests(texts: Iterable[Any]) -> set[str]:
    return {row_digest(t) for t in texts}


def lineage_of(base_model: str) -> dict[str, Any] | None:
    """The warm start's lineage when ``base_model`` is a directory it wrote, else None."""
    path = Path(base_model).expanduser() / LINEAGE_FILE if base_model else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable warm-start lineage ({exc}); write the base model "
                          "again with `consortium warm-start`") from exc
    if record.get("format") != FORMAT:
        raise ConfigError(f"{path}: warm-start format {record.get('format')!r}, this version "
                          f"reads {FORMAT}")
    return record


def check_disjoint(base_model: str, data_path: str, private_texts: Sequence[Any]) -> None:
    """ConfigError when the run's private ``data`` is one of the public files that warm-started
    ``base_model``, or shares a row with them: the public data must be public."""
    lineage = lineage_of(base_model)
    if lineage is None:
        return
    own = file_sha256(data_path)
    for public in lineage["public_data"]:
        if public["sha256"] == own:
            raise ConfigError(f"data = {data_path!r} is the public file {public['path']!r} that "
                              f"warm-started base-model {base_model!r}: a partner's private "
                              "rows must never be warm-start data")
    public_rows = set((Path(base_model).expanduser() / ROWS_FILE).read_text().split())
    shared = [i for i, t in enumerate(private_texts) if row_digest(t) in public_rows]
    if shared:
        raise ConfigError(f"data = {data_path!r} shares {len(shared)} rows (the first is row "
                          f"{shared[0] + 1}) with the public data that warm-started base-model "
                          f"{base_model!r}; warm-start on public rows only")


def check_public_disjoint(config: Any, labels: Sequence[str]) -> None:
    """``check_disjoint`` for a run config whose ``data`` the coordinator holds (a simulation);
    nothing to check in a deployment, where each partner holds its own file."""
    if not config.data or lineage_of(config.base_model) is None:
        return
    from common.tasks import get_task

    data = get_task(config.task).read(config.data, config, labels)
    check_disjoint(config.base_model, config.data, data.texts)


def lineage_record(base_model: str, objective: str, task: str, labels: Sequence[str],
                   files: Sequence[PublicFile], settings: dict[str, Any], seconds: float,
                   examples: int, head: Sequence[str] | None = None,
                   label_map: str = "") -> dict[str, Any]:
    """``head``: the tags of the tagger head saved with the encoder (None: encoder only);
    ``label_map``: how the public entity types were renamed (empty: not)."""
    return {"format": FORMAT, "base_model": base_model, "objective": objective, "task": task,
            "labels": list(labels), "label_map": label_map,
            "head": list(head) if head is not None else None,
            "public_data": [asdict(f) for f in files],
            "examples": examples, **settings, "seconds": round(seconds, 3),
            "privacy": PRIVACY_NOTE}


def model_card(lineage: dict[str, Any]) -> str:
    files = "\n".join(f"| `{f['path']}` | {f['rows']} | `{f['sha256']}` |"
                      for f in lineage["public_data"])
    return "\n".join([
        "---", "library_name: transformers", "tags: [consortium, warm-start, public-data]", "---",
        "", "# Warm-started base model (public data only)", "",
        f"- Started from: {lineage['base_model']}",
        f"- Objective: {lineage['objective']} ({lineage['task']}"
        + (f", labels {', '.join(lineage['labels'])}" if lineage["labels"] else "") + ")",
        *([f"- Public entity types renamed: {lineage['label_map']}"]
          if lineage.get("label_map") else []),
        (f"- Tagger head kept for the tags {', '.join(lineage['head'])}: a run with exactly "
         "these tags starts from it; any other run gets a fresh head" if lineage.get("head")
         else "- Encoder only: every run gets a fresh head"),
        f"- {lineage['examples']} public examples, {lineage['epochs']} epoch(s), "
        f"{lineage['seconds']:g} s", "",
        "| public file | rows | SHA-256 |", "|---|---|---|", files, "",
        "## Privacy", "", lineage["privacy"], "",
        "Use it as `base-model` (the directory); partners accept it through their "
        "`allowed-base-models` and the frozen-weight check, as any base model.", ""])


def read_public(paths: Sequence[str], read_one) -> tuple[list[Any], list[PublicFile]]:
    """Each file through ``read_one(path) -> dataset`` (the task's reader, whose errors name the
    file and row); an empty file is a DataError naming it. Returns the datasets and lineage."""
    if not paths:
        raise ConfigError("--public-data is empty: give one or more public CSV / JSONL / CoNLL "
                          "files")
    datasets, files = [], []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such public data file")
        data = read_one(path)
        if not len(data):
            raise DataError(f"{path}: the public file has no rows")
        datasets.append(data)
        files.append(PublicFile(str(Path(path).resolve()), file_sha256(path), len(data)))
    return datasets, files

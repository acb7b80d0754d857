"""A partner's local text data: CSV / TSV (with a header row) or JSONL, optionally gzipped.

Labels are mapped to ids through the label set the run declares, so every partner agrees on what id
3 means. Every error names the file, the row and what to change.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.errors import DataError
from common.privacy.partner_secret import held_out_point

logger = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class TextDataset:
    """Texts and label ids of one partner, with the run's label names."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    groups: tuple[str, ...] = ()  # values of a grouping column (e.g. domain), when asked for
    persons: tuple[str, ...] = ()  # whose row it is (person-column): per-person DP's unit
    subgroups: tuple[str, ...] = ()  # the group-column (e.g. sex, age band): per-group scores

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        pick = [int(i) for i in indices]
        return TextDataset(
            texts=tuple(self.texts[i] for i in pick),
            labels=tuple(self.labels[i] for i in pick),
            label_names=self.label_names,
            groups=tuple(self.groups[i] for i in pick) if self.groups else (),
            persons=tuple(self.persons[i] for i in pick) if self.persons else (),
            subgroups=tuple(self.subgroups[i] for i in pick) if self.subgroups else (),
        )


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise DataError(f"{path}: unknown file type; use one of "
                        f"{', '.join(sorted(FORMATS))} (optionally .gz)")
    return fmt


def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a data file as (line number, {column: value}); raises DataError on any fault."""
    path = Path(path)
    fmt = file_format(path)
    text = read_text(path)
    rows = parse_jsonl(path, text) if fmt == "jsonl" else _parse_delimited(path, text, fmt)
    if not rows:
        raise DataError(f"{path}: the file has no data rows")
    return rows


def read_text(path: Path) -> str:
    """A data file's text: gunzipped when it ends in .gz, UTF-8, without a byte-order mark."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file; check the path (relative paths are read "
                        f"from {Path.cwd()})")
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable gzip file ({exc})") from exc
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: byte {raw[exc.start]:#04x} is not UTF-8; re-save the "
                        "file as UTF-8") from exc
    return text


def _parse_delimited(path: Path, text: str, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{path}: the file is empty; it needs a header row and data rows")
        header = [h.strip() for h in header]
        rows = []
        for values in reader:
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(values)} fields, the header has "
                                f"{len(header)}; quote fields that contain {delimiter!r}")
            rows.append((reader.line_num, dict(zip(header, values))))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({exc})") from exc
    return rows


def parse_jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); JSONL needs one "
                            "object per line") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found "
                            f"{type(obj).__name__}")
        rows.append((number, obj))
    return rows


def column_value(path: Path, number: int, row: dict[str, Any], column: str, role: str) -> str:
    if column not in row:
        raise DataError(f"{path}:{number}: no {role} column {column!r}; columns are "
                        f"{sorted(row)}; set --{role}-column")
    value = row[column]
    if value is None or isinstance(value, (dict, list)):
        raise DataError(f"{path}:{number}: {role} column {column!r} holds {value!r}; "
                        "expected a string or number")
    return str(value).strip()


def infer_labels(path: str | Path, label_column: str) -> tuple[str, ...]:
    """The sorted set of labels in a file (for simulation, where one file is the whole data)."""
    rows = read_rows(path)
    return tuple(sorted({column_value(Path(path), n, r, label_column, "label") for n, r in rows}))


def load_text_dataset(path: str | Path, text_column: str, label_column: str,
                      label_names: Sequence[str], group_column: str | None = None,
                      person_column: str | None = None,
                      subgroup_column: str | None = None) -> TextDataset:
    """Read a partner's file and map its labels to the run's ids; ``group_column`` splits
    simulated partners, ``person_column`` names whose row it is (per-person DP) and
    ``subgroup_column`` the group it is scored in (fairness). Neither of the last two may be
    empty in any row."""
    path = Path(path)
    ids = {name: i for i, name in enumerate(label_names)}
    texts, labels, groups, persons, subgroups = [], [], [], [], []
    for number, row in read_rows(path):
        text = column_value(path, number, row, text_column, "text")
        if not text:
            raise DataError(f"{path}:{number}: the text is empty; drop the row or fill it in")
        label = column_value(path, number, row, label_column, "label")
        if label not in ids:
            raise DataError(f"{path}:{number}: label {label!r} is not in the run's label set "
                            f"{list(label_names)}; fix the row or declare the label in `labels`")
        texts.append(text)
        labels.append(ids[label])
        if group_column:
            groups.append(column_value(path, number, row, group_column, "group"))
        if person_column:
            persons.append(filled_value(path, number, row, person_column, "person"))
        if subgroup_column:
            subgroups.append(filled_value(path, number, row, subgroup_column, "group"))
    logger.info("read %d examples from %s", len(texts), path)
    return TextDataset(tuple(texts), tuple(labels), tuple(label_names), tuple(groups),
                       tuple(persons), tuple(subgroups))


def filled_value(path: Path, number: int, row: dict[str, Any], column: str, role: str) -> str:
    """A person id or group value: present and not empty (an empty one would pool strangers)."""
    value = column_value(path, number, row, column, role)
    if not value:
        raise DataError(f"{path}:{number}: the {role} column {column!r} is empty; every row "
                        f"needs its {role}")
    return value


def split_train_test(data: TextDataset, test_fraction: float,
                     seed: int) -> tuple[TextDataset, TextDataset]:
    """A deterministic shuffle-split; both parts keep at least one example."""
    if len(data) < 2:
        raise DataError(f"{len(data)} example(s) cannot be split into train and test; "
                        "a partner needs at least 2")
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = min(max(1, round(test_fraction * len(data))), len(data) - 1)
    return data.subset(order[n_test:]), data.subset(order[:n_test])


def split_held_out(data: TextDataset, test_fraction: float,
                   key: bytes | None) -> tuple[TextDataset, TextDataset]:
    """(train, held-out) decided by each row's own text, not by a seed or the row order.

    A row is held out when the HMAC-SHA256 of its text under the partner's secret ``key``
    (common.privacy.partner_secret; None: a simulated partner's public SHA-256) falls in the lowest
    ``test_fraction`` of the hash range, so the split is the same in every run, whatever seed or
    label order the coordinator sets, and the coordinator, which may know the texts, cannot
    tell which of a real partner's rows are held out; appended rows
    do not move old ones, and duplicate texts stay together. With person ids, the hash is the
    person's: all of a person's rows land on one side, so the held-out score is on people the
    model never trained on.
    Both parts keep at least one example (the lowest-hash row is held out if none falls in).
    """
    if len(data) < 2:
        raise DataError(f"{len(data)} example(s) cannot be split into train and test; "
                        "a partner needs at least 2")
    points = [held_out_point(key, value) for value in _split_keys(data)]
    test = [i for i, h in enumerate(points) if h < test_fraction]
    if not test:
        test = [min(range(len(points)), key=points.__getitem__)]
    if len(test) == len(data):
        test.remove(max(test, key=points.__getitem__))
    held = set(test)
    return data.subset([i for i in range(len(data)) if i not in held]), data.subset(test)


def _split_keys(data: TextDataset) -> Sequence[Any]:
    """What the held-out split hashes: each row's person, else its text (words, for token
    data)."""
    return getattr(data, "persons", ()) or data.texts


def data_fingerprint(data: TextDataset) -> str:
    """SHA-256 of texts, labels and label names: the identity a privacy ledger is kept for."""
    digest = hashlib.sha256(json.dumps([data.label_names, data.texts, data.labels]).encode())
    return digest.hexdigest()


def apply_corrections(train: TextDataset, test: TextDataset, fixes: TextDataset,
                      test_fraction: float, key: bytes | None,
                      ) -> tuple[TextDataset, TextDataset, dict[str, int]]:
    """A partner's reviewed corrections (text, corrected label) folded into its own data
    without moving the held-out split (``split_held_out`` with ``test_fraction`` and ``key``):
    every row with a corrected text gets the corrected label where it is, on its side and with
    its own person and group; a correction whose text is new joins the side its person (a
    known one: where that person is; a new one: by the keyed hash) or, without persons, its
    text hashes to. So no correction can move a held-out text or person into training.
    Returns both splits and the counts (never the rows) the partner may report."""
    latest = {text: i for i, text in enumerate(fixes.texts)}  # the last correction wins
    known = set(train.texts) | set(test.texts)
    new = [i for t, i in latest.items() if t not in known]
    sides = {"test": set(test.persons), "train": set(train.persons)}
    held = {i for i in new if _held_out_side(fixes, i, sides, test_fraction, key)}
    to_test, to_train = [i for i in new if i in held], [i for i in new if i not in held]
    relabelled_test, test = _relabel(test, fixes, latest)
    relabelled_train, train = _relabel(train, fixes, latest)
    train, test = _extend(train, fixes.subset(to_train)), _extend(test, fixes.subset(to_test))
    return train, test, {"corrections": len(latest), "held_out_relabelled": relabelled_test,
                         "held_out_added": len(to_test),
                         "training_rows_relabelled": relabelled_train,
                         "training_rows_added": len(to_train)}


def _held_out_side(fixes: TextDataset, i: int, persons: dict[str, set[str]],
                   test_fraction: float, key: bytes | None) -> bool:
    """Whether the new corrected row ``i`` belongs to the held-out split (``persons``: the
    persons of each side)."""
    if fixes.persons:
        person = fixes.persons[i]
        if person in persons["test"] or person in persons["train"]:
            return person in persons["test"]
        return held_out_point(key, person) < test_fraction
    return held_out_point(key, fixes.texts[i]) < test_fraction


def _relabel(data: TextDataset, fixes: TextDataset,
             latest: dict[Any, int]) -> tuple[int, TextDataset]:
    """(rows relabelled, ``data`` with each corrected text's label replaced in place)."""
    labels = [fixes.labels[latest[t]] if t in latest else y
              for t, y in zip(data.texts, data.labels)]
    changed = sum(t in latest for t in data.texts)
    return changed, dataclasses.replace(data, labels=tuple(labels))


def _extend(data: TextDataset, more: TextDataset) -> TextDataset:
    """``data`` with the rows of ``more`` after it (the columns ``data`` has)."""
    if not len(more):
        return data
    return TextDataset(
        data.texts + more.texts, data.labels + more.labels, data.label_names,
        data.groups + more.groups if data.groups else (),
        data.persons + more.persons if data.persons else (),
        data.subgroups + more.subgroups if data.subgroups else ())

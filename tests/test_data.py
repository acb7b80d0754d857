"""common.data.text: reading CSV / TSV / JSONL(.gz) files, label mapping, splits, fingerprints."""

from __future__ import annotations

import gzip
import json

import pytest

from common.data.text import (TextDataset, data_fingerprint, infer_labels, load_text_dataset,
                         read_rows, split_train_test)
from common.errors import DataError

LABELS = ("neg", "pos", "neutral")


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\ngood film,pos\n"bad, awful",neg\n\nso so,neutral\n')
    return path


def test_csv_rows_carry_their_line_numbers(csv_file):
    assert read_rows(csv_file) == [
        (2, {"text": "good film", "label": "pos"}),
        (3, {"text": "bad, awful", "label": "neg"}),
        (5, {"text": "so so", "label": "neutral"}),  # the blank line 4 is skipped
    ]


def test_labels_map_to_their_position_in_the_declared_set(csv_file):
    data = load_text_dataset(csv_file, "text", "label", LABELS)
    assert data.texts == ("good film", "bad, awful", "so so")
    assert data.labels == (1, 0, 2)
    assert data.label_names == LABELS
    reordered = load_text_dataset(csv_file, "text", "label", ("pos", "neutral", "neg"))
    assert reordered.labels == (0, 2, 1)


def test_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('body\tcat\tdomain\n"quoted" text\tpos\tweb\nplain, comma\tneg\tnews\n')
    data = load_text_dataset(path, "body", "cat", LABELS, group_column="domain")
    assert data.texts == ('"quoted" text', "plain, comma")  # TSV keeps quotes literally
    assert data.labels == (1, 0)
    assert data.groups == ("web", "news")


@pytest.mark.parametrize("name, compress", [("d.jsonl", False), ("d.jsonl.gz", True)])
def test_jsonl_and_gzipped_jsonl(tmp_path, name, compress):
    text = _jsonl([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]) + "\n"
    text += _jsonl([{"text": "c", "label": "pos", "extra": 1}])
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    assert [n for n, _ in read_rows(path)] == [1, 2, 4]
    data = load_text_dataset(path, "text", "label", LABELS)
    assert data.texts == ("a", "b", "c")
    assert data.labels == (1, 0, 1)


def test_numeric_labels_in_jsonl_match_their_string_form(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_jsonl([{"text": "a", "label": 1}, {"text": "b", "label": 0}]))
    assert load_text_dataset(path, "text", "label", ("0", "1")).labels == (1, 0)


def test_infer_labels_is_the_sorted_label_set(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_jsonl([{"t": "x", "y": "b"}, {"t": "x", "y": "a"}, {"t": "x", "y": " b "}]))
    assert infer_labels(path, "y") == ("a", "b")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="no such data file") as info:
        read_rows(path)
    assert str(path) in str(info.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("text,label\na,pos\n")
    with pytest.raises(DataError, match="unknown file type") as info:
        read_rows(path)
    assert str(path) in str(info.value)


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,label\nhello,pos\n")
    with pytest.raises(DataError) as info:
        load_text_dataset(path, "text", "label", LABELS)
    message = str(info.value)
    assert f"{path}:2" in message
    assert "'text'" in message
    assert "['body', 'label']" in message


def test_label_outside_the_declared_set(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,pos\nodd,spam\n")
    with pytest.raises(DataError) as info:
        load_text_dataset(path, "text", "label", LABELS)
    message = str(info.value)
    assert f"{path}:3:" in message
    assert "'spam'" in message


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv", "empty.jsonl"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert str(path) in str(info.value)


def test_header_only_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows") as info:
        read_rows(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("prefix", [
    b"",
    b"\xef\xbb\xbf",
], ids=["plain", "bom"])
def test_undecodable_bytes_name_the_line(tmp_path, prefix):
    path = tmp_path / "d.csv"
    path.write_bytes(prefix + b"text,label\nhello,a\n\xff\xfe,b\n")
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert f"{path}:3:" in str(info.value)
    assert "0xff" in str(info.value)


def test_wrong_field_count_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,pos\nb,neg,extra\n")
    with pytest.raises(DataError, match="3 fields") as info:
        read_rows(path)
    assert f"{path}:3:" in str(info.value)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match="not valid JSON") as info:
        read_rows(path)
    assert f"{path}:2:" in str(info.value)


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n["b", "neg"]\n')
    with pytest.raises(DataError, match="expected a JSON object") as info:
        read_rows(path)
    assert f"{path}:2:" in str(info.value)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\nok,pos\n{text},neg\n")
    with pytest.raises(DataError, match="text is empty") as info:
        load_text_dataset(path, "text", "label", LABELS)
    assert f"{path}:3:" in str(info.value)


def _dataset(n):
    return TextDataset(tuple(f"t{i}" for i in range(n)), tuple(i % 3 for i in range(n)), LABELS)


def test_split_is_deterministic_disjoint_and_complete():
    data = _dataset(20)
    train, test = split_train_test(data, 0.25, seed=7)
    assert (train, test) == split_train_test(data, 0.25, seed=7)
    assert len(test) == 5 and len(train) == 15
    assert set(train.texts).isdisjoint(test.texts)
    assert sorted(train.texts + test.texts) == sorted(data.texts)
    for part in (train, test):  # each text keeps its own label
        assert all(part.labels[i] == int(t[1:]) % 3 for i, t in enumerate(part.texts))
    other_train, _ = split_train_test(data, 0.25, seed=8)
    assert other_train.texts != train.texts


def test_split_keeps_one_example_on_each_side():
    train, test = split_train_test(_dataset(3), 0.01, seed=0)
    assert (len(train), len(test)) == (2, 1)
    train, test = split_train_test(_dataset(3), 0.99, seed=0)
    assert (len(train), len(test)) == (1, 2)
    with pytest.raises(DataError):
        split_train_test(_dataset(1), 0.5, seed=0)


def test_fingerprint_changes_when_one_label_changes():
    data = _dataset(6)
    same = TextDataset(data.texts, data.labels, data.label_names)
    changed = TextDataset(data.texts, data.labels[:-1] + ((data.labels[-1] + 1) % 3,), LABELS)
    assert data_fingerprint(data) == data_fingerprint(same)
    assert data_fingerprint(changed) != data_fingerprint(data)
    assert len(data_fingerprint(data)) == 64

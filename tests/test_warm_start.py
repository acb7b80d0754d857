"""`consortium warm-start`: a base model adapted on public data, with its lineage; it spends no
ε and touches no ledger; partners take it only through allowed-base-models and the frozen-weight
check; bad public files and public data that is a run's private data are refused, nothing
written."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from client.data import PartnerSettings
from client.partner import train_round
from common import protocol as P
from common.data import synthetic
from common.config import RunConfig
from common.errors import ConfigError, ModelError, PrivacyError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.model.warm_start import LINEAGE_FILE
from simulations.cli import main
from simulations.simulate import Federation, preflight


def public_csv(path: Path, partner: int = 77, rows: int = 120) -> Path:
    """Labelled text in the public set's own columns (``topic``), not the federation's."""
    data = synthetic.synthetic_partner_data(partner, rows, seed=5)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "topic"])
        writer.writerows((t, data.label_names[y]) for t, y in zip(data.texts, data.labels))
    return path


@pytest.fixture(scope="module")
def warm(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("warm")
    public = public_csv(root / "public.csv")
    out = root / "warm-base"
    assert main(["warm-start", "--public-data", str(public), "--label-column", "topic",
                 "--base-model", tiny_bert, "--out", str(out), "--max-length", "16"]) == 0
    return out, public


def config_on(base: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=base, finetune="pooled-head", examples_per_partner=200,
                  max_length=16, num_rounds=1, epsilon=8.0, dp_plan_check=False,
                  out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def test_the_lineage_names_every_public_file_objective_epochs_and_seconds(warm) -> None:
    out, public = warm
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    assert lineage["public_data"] == [{
        "path": str(public.resolve()), "rows": 120,
        "sha256": hashlib.sha256(public.read_bytes()).hexdigest()}]
    assert lineage["objective"] == "supervised" and lineage["epochs"] == 1
    assert lineage["seconds"] > 0 and lineage["labels"] == list(synthetic.LABELS)
    card = (out / "README.md").read_text()
    assert str(public.resolve()) in card and lineage["public_data"][0]["sha256"] in card
    assert "spends no ε" in card
    # a base model like any other: the encoder changed, and it loads where a base model does
    from transformers import AutoModel

    assert AutoModel.from_pretrained(out).config.hidden_size == 32


def test_warm_start_leaves_every_ledger_unchanged(warm, tiny_bert: str, tmp_path: Path) -> None:
    config = config_on(tiny_bert, tmp_path)
    model = build_model(config, synthetic.LABELS)
    train_round(config, PartnerSettings(name="p0"), trainable_state(model),
                frozen_fingerprint(model), 1, "r")
    ledgers = sorted((tmp_path / "ledgers").rglob("*"))
    before = {p: p.read_bytes() for p in ledgers if p.is_file()}
    assert before  # the partner spent ε on its round
    public = public_csv(tmp_path / "public2.csv", partner=78)
    assert main(["warm-start", "--public-data", str(public), "--label-column", "topic",
                 "--base-model", tiny_bert, "--out", str(tmp_path / "w2"),
                 "--max-length", "16"]) == 0
    assert sorted((tmp_path / "ledgers").rglob("*")) == ledgers
    assert {p: p.read_bytes() for p in ledgers if p.is_file()} == before


def test_partners_take_it_only_through_their_allowed_list_and_the_weight_check(
        warm, tiny_bert: str, tmp_path: Path) -> None:
    out, _ = warm
    config = config_on(str(out), tmp_path)
    model = build_model(config, synthetic.LABELS)
    shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
    strict = PartnerSettings(name="p0", allowed_base_models=(tiny_bert,))
    with pytest.raises(PrivacyError, match="not in p0's allowed list"):
        train_round(config, strict, shared, fingerprint, 1, "r")
    assert not (tmp_path / "ledgers").exists() or not any((tmp_path / "ledgers").rglob("*.json"))
    # a partner whose copy at that path holds other weights (here: the base it started from)
    other = config.replace(base_model=tiny_bert)
    with pytest.raises(ModelError, match="frozen weights"):
        train_round(other, PartnerSettings(name="p1"), shared, fingerprint, 1, "r")
    assert not any((tmp_path / "ledgers").rglob("*.json"))  # refused before any ε
    allowed = PartnerSettings(name="p0", allowed_base_models=(str(out),))
    reply = train_round(config, allowed, shared, fingerprint, 1, "r")
    assert reply.metrics[P.EPSILON] > 0


def test_release_model_card_and_privacy_report_carry_the_lineage(warm, tmp_path: Path) -> None:
    from server.outputs import export_model, privacy_report

    out, public = warm
    config = config_on(str(out), tmp_path)
    model = build_model(config, synthetic.LABELS)
    report = privacy_report(config, {})
    assert report["public_data"]["epsilon_covers_it"] is False
    assert report["public_data"]["files"][0]["path"] == str(public.resolve())
    export = export_model(tmp_path, config, synthetic.LABELS, trainable_state(model), report)
    release = json.loads((export / "release.json").read_text())
    assert release["base_model"]["warm_start"] == json.loads((out / LINEAGE_FILE).read_text())
    card = (export / "README.md").read_text()
    assert "Warm-started on public data" in card and str(public.resolve()) in card


@pytest.mark.parametrize("content,expected", [
    ("", "the file is empty"),
    ("text,topic\n", "no data rows"),
    ("text,topic\n\"unclosed,health\n", "1 fields, the header has 2"),
    ("text,label\nfine words,health\n", "no label column 'topic'"),
    ("text,topic\nfine words\n", "1 fields, the header has 2"),
    ("text,topic\n\xff,health\n", "is not UTF-8"),
])
def test_a_bad_public_file_is_one_line_naming_it_and_nothing_is_written(
        content: str, expected: str, tiny_bert: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "public.csv"
    bad.write_bytes(content.encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    out = tmp_path / "warm"
    assert main(["warm-start", "--public-data", str(bad), "--label-column", "topic",
                 "--base-model", tiny_bert, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public.csv"]  # no out, no temp


def test_a_simulation_on_the_public_rows_is_refused_before_anything_is_written(
        warm, tmp_path: Path) -> None:
    out, public = warm
    run_out = tmp_path / "run"
    same = RunConfig(base_model=str(out), data=str(public), label_column="topic",
                     out_dir=str(run_out))
    with pytest.raises(ConfigError, match="is the public file"):
        preflight(same, Federation(2))
    overlapping = public_csv(tmp_path / "private.csv", partner=91, rows=40)
    rows = overlapping.read_text().splitlines()
    text, label = next(csv.reader([public.read_text().splitlines()[5]]))
    respaced = f"{text.upper().replace(' ', '  ')},{label}"  # re-cased, re-spaced: the same row
    overlapping.write_text("\n".join([*rows, respaced]) + "\n")
    shares = same.replace(data=str(overlapping))
    with pytest.raises(ConfigError, match="shares 1 rows .*row 41"):
        preflight(shares, Federation(2))
    disjoint = same.replace(data=str(public_csv(tmp_path / "ok.csv", partner=92, rows=40)))
    preflight(disjoint, Federation(2))
    assert not run_out.exists()

"""People, not rows (issue 16): per-person DP and per-group scores end to end in process, small
groups suppressed everywhere, worst group and gap on a hand-computed case, and bad person / group
columns refused with one line naming the file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import protocol as P
from common.config import RunConfig
from common.data.text import load_text_dataset, split_held_out
from common.errors import DataError
from common.evaluation.groups import group_counts, group_scores, reported_groups
from common.privacy.ledger import epsilon_of

KEY = bytes(32)  # a partner secret, for the splits computed here
RARE = (7,)  # the person of group X: held out at both partners (1 <= X < 3 rows; checked)


PLANTED = ["Margaret Thompson", "555-867-5309", "jane.doe@example.org", "078-05-1120",
           "michael.smith@hospital.com", "(212) 555-0147", "536-90-4399", "Robert Johnson"]


def people_csv(path: Path, persons: int = 40, rare: tuple[int, ...] = RARE) -> Path:
    """Each person writes 3-5 notes, one in three naming a planted name, phone, e-mail or SSN;
    sex F / M, and the persons ``rare`` of a rare group X."""
    rows = ["text,label,person,sex"]
    for p in range(persons):
        sex = "X" if p in rare else ("F" if p % 2 else "M")
        for note in range(3 + p % 3):
            positive = (p + note) % 2 == 0
            word = "great good fine" if positive else "awful bad poor"
            pii = f" call {PLANTED[(p + note) % len(PLANTED)]}" if note % 3 == 0 else ""
            rows.append(f"note {note} by {p}: it was {word}{pii},{'pos' if positive else 'neg'},"
                        f"id{p},{sex}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_reported_groups_suppress_small_ones_and_their_complement():
    assert reported_groups({"F": 40, "M": 30, "X": 4}, 5) == {"F", "M"} - {"M"}  # X + M leave
    assert reported_groups({"F": 40, "M": 30, "X": 4, "Y": 3}, 5) == {"F", "M"}  # 7 >= 5
    assert reported_groups({"F": 40, "M": 30}, 5) == {"F", "M"}
    assert reported_groups({"F": 4, "M": 3}, 5) == set()


def test_worst_group_and_gap_on_a_hand_computed_case():
    labels = ("neg", "pos")
    # partner A: F 6/8 right, M 3/4 right; partner B: F 2/2 right, M 1/4 right, X (2) suppressed
    a = group_counts([0, 1] * 4 + [0, 1, 0, 1], [0, 1, 0, 1, 0, 1, 1, 0] + [0, 1, 0, 0],
                     ["F"] * 8 + ["M"] * 4, labels, min_size=2)
    b = group_counts([1, 1, 0, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 0, 0, 1],
                     ["F", "F", "M", "M", "M", "M", "X", "X"], labels, min_size=3)
    assert not any("X" in key for key in b)
    assert "group/F/n" not in b and "group/M/n" in b  # F (2) < 3: out, and X (2) with it
    scores = group_scores([a, b])
    assert scores["eval_groups"]["F"]["examples"] == 8  # B's F cell was suppressed
    assert scores["eval_groups"]["F"]["accuracy"] == pytest.approx(6 / 8)
    assert scores["eval_groups"]["M"]["examples"] == 8
    assert scores["eval_groups"]["M"]["accuracy"] == pytest.approx((3 + 1) / 8)
    assert scores["eval_group_worst"] == {"group": "M", "value": pytest.approx(0.5)}
    assert scores["eval_group_best"] == {"group": "F", "value": pytest.approx(0.75)}
    assert scores["eval_group_gap"] == pytest.approx(0.25)
    f_pos = scores["eval_groups"]["F"]["per_class"]["pos"]
    assert f_pos["support"] == 4 and f_pos["recall"] == pytest.approx(3 / 4)


def test_a_group_value_with_a_slash_is_one_key():
    counts = group_counts([0, 1, 1], [0, 1, 0], ["18/30"] * 3, ("a", "b"), 1)
    assert set(group_scores([counts])["eval_groups"]) == {"18/30"}


@pytest.mark.parametrize("body, column, expected", [
    ("text,label,person\nhi,a,p1\nyo,b,\n", "person", ":3: the person column 'person' is empty"),
    ("text,label\nhi,a\n", "person", ":2: no person column 'person'"),
    ("text,label,sex\nhi,a,F\nyo,b, \n", "sex", ":3: the group column 'sex' is empty"),
    ("text,label\nhi,a\n", "sex", ":2: no group column 'sex'"),
])
def test_bad_person_or_group_column(tmp_path: Path, body: str, column: str, expected: str):
    path = tmp_path / "d.csv"
    path.write_text(body)
    kwargs = {"person_column": column} if column == "person" else {"subgroup_column": column}
    with pytest.raises(DataError) as err:
        load_text_dataset(path, "text", "label", ("a", "b"), **kwargs)
    assert expected in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_simulate_refuses_a_missing_person_column_and_writes_nothing(tmp_path, capsys):
    from simulations.cli import main

    data = tmp_path / "d.csv"
    data.write_text("text,label\nhi,a\nyo,b\n")
    out = tmp_path / "out"
    code = main(["simulate", "--data", str(data), "--out", str(out),
                 "--set", 'person-column="pid"'])
    err = capsys.readouterr().err
    assert code != 0 and f"{data}:2: no person column 'pid'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_persons_rows_are_held_out_together(tmp_path: Path):
    data = load_text_dataset(people_csv(tmp_path / "p.csv"), "text", "label", ("neg", "pos"),
                             person_column="person")
    train, test = split_held_out(data, 0.3, KEY)
    assert test.persons and not set(train.persons) & set(test.persons)


@pytest.mark.slow
def test_people_end_to_end(tiny_bert: str, tmp_path: Path, monkeypatch):
    """2 partners, 2 rounds, per-person DP, groups and de-identification at once: ledgers and
    report say 'person', ε per person is Opacus' at the persons' q; groups F and M are scored,
    the rare group X appears nowhere in the outputs; planted names, phones, e-mails and SSNs
    never reach the tokenizer (training or evaluation), and the audit log counts them only."""
    import client.received
    from server.coordinator import run_federation
    from simulations.local_grid import LocalGrid

    seen: list[str] = []
    real = client.received.load_tokenizer

    class Spy:  # the tokenizer, recording every text it is given
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __call__(self, texts, *args, **kwargs):
            seen.extend([texts] if isinstance(texts, str) else list(texts))
            return self.tokenizer(texts, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

    monkeypatch.setattr(client.received, "load_tokenizer",
                        lambda config, **kwargs: Spy(real(config, **kwargs)))

    from common.partition import partition_indices

    data = people_csv(tmp_path / "people.csv")
    full = load_text_dataset(data, "text", "label", ("neg", "pos"), person_column="person",
                             subgroup_column="sex")
    held_out_x = [split_held_out(full.subset(rows), 0.4, None)[1].subgroups.count("X")
                  for rows in partition_indices(full, 2, "iid", 42)]  # simulated: public hash
    assert all(1 <= n < 3 for n in held_out_x)  # so suppression is what keeps X out
    assert all(p in data.read_text() for p in PLANTED)
    out = tmp_path / "run"
    config = RunConfig(base_model=tiny_bert, data=str(data),
                       labels="neg,pos", person_column="person", group_column="sex",
                       min_group_size=3, max_length=32, deidentify=True,
                       dp_plan_check=False, num_rounds=2,
                       local_epochs=1, batch_size=4, delta=1e-3, test_fraction=0.4,
                       out_dir=str(out), ledger_dir=str(out / "ledgers"))
    # the floor is the partners' (10 unless they set one; a run can only raise it): these
    # partners set 3, the run's min-group-size = 3 alone would not lower their default
    run_federation(LocalGrid(config, 2, node_config={"min-group-size": 3}), config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = lines[-1]
    assert set(final["eval_groups"]) <= {"F", "M"} and final["eval_groups"]
    scored = {g: v["accuracy"] for g, v in final["eval_groups"].items()}
    assert final["eval_group_worst"]["value"] == min(scored.values())
    assert final["eval_group_gap"] == pytest.approx(max(scored.values()) - min(scored.values()))
    report = json.loads((out / "privacy_report.json").read_text())
    for name, partner in report["partners"].items():
        ledger = json.loads(next((out / "ledgers").glob(f"{name}@*.json")).read_text())["body"]
        releases = ledger["releases"]
        assert [r["unit"] for r in releases] == ["person", "person"]
        persons = releases[-1]["persons"]
        assert partner["unit"] == "person" and partner["persons"] == persons < 40
        assert releases[-1]["sample_rate"] == pytest.approx(1 / -(-persons // 4))
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
        assert partner["epsilon"] == pytest.approx(epsilon_of(history, 1e-3), rel=1e-9)
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".html", ".txt"):
            text = path.read_text(errors="ignore")
            assert "group/X" not in text and '"X"' not in text, path
    assert len(seen) >= len(full) and any("<PERSON>" in t for t in seen)
    assert not [p for p in PLANTED if any(p in t for t in seen)]
    audit = (out / "ledgers" / "audit.jsonl").read_text()
    assert not [p for p in PLANTED if p in audit]
    masked = next(json.loads(x) for x in audit.splitlines() if '"deidentified"' in x)
    for kind in ("PERSON", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN"):
        assert masked["deidentified"][kind] >= 1, masked
    card = (out / "model" / "README.md").read_text()
    assert "per person" in card and "worst group" in card
    assert P.PER_PERSON  # the reply key the report reads the unit from


def test_a_ledger_never_mixes_persons_and_examples(tmp_path: Path):
    from common.errors import PrivacyError
    from common.privacy.ledger import Release, spend

    path = tmp_path / "ledger.json"
    spend(path, "src", Release("r1", 1, 1.0, 0.1, 10), 1e-5, 100.0)
    with pytest.raises(PrivacyError, match="example-level releases; a person-level round"):
        spend(path, "src", Release("r2", 1, 1.0, 0.1, 10, unit="person", persons=5), 1e-5, 100.0)
    assert len(json.loads(path.read_text())["body"]["releases"]) == 1  # nothing recorded


@pytest.mark.parametrize("claim, error", [
    ({"num-examples": 60.0, "persons": 15.0}, None),  # q = 1/4 at batch 4: 13..16 persons
    ({"num-examples": 60.0, "persons": 40.0}, "per person: persons 40 contradicts"),
    ({"num-examples": 10.0, "persons": 15.0}, "each with at least one row"),
    ({"num-examples": 60.0, "persons": 0.0}, "a whole number of persons"),
    ({"num-examples": 60.0, "persons": 14.5}, "a whole number of persons"),
])
def test_a_per_person_claim_is_checked_against_its_q(claim, error):
    """A malicious partner's per-person reply: its persons must fit q, its rows its persons."""
    from common.errors import UpdateError
    from common.wire.weights import check_claim

    metrics = {P.SAMPLE_RATE: 0.25, P.PER_PERSON: 1.0, **claim}
    if error is None:
        assert check_claim(metrics, 4) == claim["num-examples"]
    else:
        with pytest.raises(UpdateError, match=error):
            check_claim(metrics, 4)



def test_partner_start_checks_every_rows_person_and_group(tmp_path: Path):
    """`consortium partner start --person-column` reads every row before the SuperNode starts."""
    from client.deploy import PartnerPolicy, check_partner_data

    data = tmp_path / "mine.csv"
    data.write_text("text,label,pid,sex\nhi,a,p1,F\nyo,b,p2,M\nok,a,,F\n")

    def policy(**extra):
        return PartnerPolicy(name="h", data=data, max_epsilon=8.0, delta=1e-5,
                             ledger_dir=tmp_path / "l", extra=tuple(extra.items()))

    assert check_partner_data(policy(**{"group-column": "sex"})) == 3
    with pytest.raises(DataError, match=f"{data}:4: the person column 'pid' is empty"):
        check_partner_data(policy(**{"person-column": "pid"}))
    with pytest.raises(DataError, match=f"{data}:2: no group column 'age'"):
        check_partner_data(policy(**{"group-column": "age"}))


def test_corrections_relabel_rows_where_they_are_and_add_new_ones_by_the_split():
    from common.data.text import TextDataset, apply_corrections

    names = ("neg", "pos")
    train = TextDataset(("a", "b", "b", "c"), (0, 0, 0, 1), names)
    test = TextDataset(("h1", "h2"), (0, 1), names)
    fixes = TextDataset(("b", "h2", "new", "b"), (1, 0, 1, 1), names)
    train2, test2, counts = apply_corrections(train, test, fixes, 0.0, KEY)  # "new": training
    assert list(zip(train2.texts, train2.labels)) == [("a", 0), ("b", 1), ("b", 1), ("c", 1),
                                                      ("new", 1)]
    assert list(zip(test2.texts, test2.labels)) == [("h1", 0), ("h2", 0)]  # never into training
    assert counts == {"corrections": 3, "held_out_relabelled": 1, "held_out_added": 0,
                      "training_rows_relabelled": 2, "training_rows_added": 1}
    train3, test3, _ = apply_corrections(train, test, fixes, 0.999999, KEY)  # "new": held out
    assert "new" in test3.texts and "new" not in train3.texts


def test_a_partners_corrections_train_and_only_their_count_leaves(tiny_bert: str,
                                                                  tmp_path: Path):
    """node-config corrections: a partner with its own file folds them in; the reply and the
    audit log carry counts only."""
    from client.partner import train_round
    from client.policy import PartnerSettings
    from common.training.fingerprint import frozen_fingerprint
    from common.model.factory import build_model, trainable_state

    data = tmp_path / "mine.csv"
    data.write_text("text,label\n" + "".join(f"note {i} was {'good' if i % 2 else 'bad'},"
                                              f"{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("text,label\nnote 3 was good,neg\na reviewed new note,pos\n")
    config = RunConfig(base_model=tiny_bert, labels="neg,pos", max_length=16, batch_size=8,
                       dp_plan_check=False, local_epochs=1, num_rounds=1, delta=1e-3,
                       out_dir=str(tmp_path / "out"), ledger_dir=str(tmp_path / "ledgers"))
    partner = PartnerSettings.from_node_config({"data-path": str(data),
                                                "allow-unlearnable-rounds": True,
                                                "corrections": str(fixes),
                                                "ledger-dir": str(tmp_path / "ledgers")})
    model = build_model(config, ("neg", "pos"))
    reply = train_round(config, partner, trainable_state(model), frozen_fingerprint(model), 1, "r")
    assert reply.metrics[P.CORRECTIONS] == 2.0
    audit = (tmp_path / "ledgers" / "audit.jsonl").read_text()
    assert "reviewed new note" not in audit
    corrections = json.loads(audit.splitlines()[-1])["corrections"]
    assert corrections["corrections"] == 2
    assert sum(corrections[k] for k in ("held_out_relabelled", "training_rows_relabelled",
                                        "held_out_added", "training_rows_added")) == 2


def test_a_groups_floor_counts_distinct_persons():
    """Twelve notes of one person are one person: at k = 10 the group is suppressed, and with it
    (the margins) the next smallest; without a person column the twelve rows would pass."""
    groups = ["solo"] * 12 + ["a"] * 15 + ["b"] * 16
    persons = ["p0"] * 12 + [f"a{i}" for i in range(15)] + [f"b{i}" for i in range(16)]
    y = [0, 1] * 21 + [0]
    assert {k.split("/")[1] for k in group_counts(y, y, groups, ("x", "y"), 10)} == {
        "solo", "a", "b"}  # rows
    counts = group_counts(y, y, groups, ("x", "y"), 10, persons)
    assert {k.split("/")[1] for k in counts} == {"b"} and counts["group/b/n"] == 16
    # persons in two groups count once when the groups are left out together
    assert reported_groups({"F": {"p1", "p2"}, "M": {"p1", "p2", "p3"}, "X": set(
        f"x{i}" for i in range(9))}, 4) == set()  # F + M: 3 persons < 4, so X goes too
    assert reported_groups({"F": {"p1", "p2"}, "M": {"p3", "p4"}, "X": set(
        f"x{i}" for i in range(9))}, 4) == {"X"}  # F + M: 4 distinct persons

"""A partner's round on a tiny BERT: DP accounting, ledger across process restarts, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from client.data import PartnerSettings, partner_dataset
from client.partner import evaluate_round, train_round
from common.wire.records import from_array_record, to_array_record
from common import protocol as P
from common.config import RunConfig
from common.errors import BudgetExceededError, ConfigError, ModelError, PrivacyError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(tiny_bert: str, tmp_path: Path, **changes) -> RunConfig:
    values = dict(base_model=tiny_bert, examples_per_partner=60, max_length=16, batch_size=8,
                  finetune="lora", dp_plan_check=False,
                  local_epochs=1, num_rounds=3, out_dir=str(tmp_path / "out"),
                  ledger_dir=str(tmp_path / "ledgers"))
    values.update(changes)
    return RunConfig(**values)


def shared_start(config: RunConfig) -> tuple[dict[str, np.ndarray], str]:
    model = build_model(config, config.label_list or LABELS)
    return trainable_state(model), frozen_fingerprint(model)


def recomputed_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta)


_ROUND_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from client.data import PartnerSettings, partner_dataset
from client.partner import train_round
from common.config import RunConfig
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS
config = RunConfig.from_mapping(json.loads({config!r}))
model = build_model(config, LABELS)
reply = train_round(config, PartnerSettings(name="p0"), trainable_state(model),
                    frozen_fingerprint(model), server_round={rnd}, run_id="r1")
print("METRICS" + json.dumps(reply.metrics))
"""


def _round_in_fresh_process(config: RunConfig, rnd: int) -> dict[str, float]:
    script = _ROUND_SCRIPT.format(root=str(ROOT), config=json.dumps(config.to_mapping()), rnd=rnd)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("METRICS"))
    return json.loads(line.removeprefix("METRICS"))


def test_epsilon_is_cumulative_across_process_restarts(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path)
    first = _round_in_fresh_process(config, 1)
    second = _round_in_fresh_process(config, 2)  # a new process: only the ledger file remembers
    sigma, q = second[P.NOISE_MULTIPLIER], second[P.SAMPLE_RATE]
    assert second[P.STEPS] == 2 * first[P.STEPS]
    assert second[P.EPSILON] > first[P.EPSILON]
    for metrics in (first, second):
        expected = recomputed_epsilon(sigma, q, int(metrics[P.STEPS]), config.delta)
        assert metrics[P.EPSILON] == pytest.approx(expected, rel=0.01)
    ledgers = list((tmp_path / "ledgers").glob("p0@*.json"))
    assert len(ledgers) == 1 and ledgers[0].stat().st_mode & 0o777 == 0o600


def test_noise_is_calibrated_to_target_epsilon_over_planned_rounds(tiny_bert: str,
                                                                    tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, num_rounds=2, epsilon=3.0)
    shared, fingerprint = shared_start(config)
    partner = PartnerSettings(name="p0")
    m1 = train_round(config, partner, shared, fingerprint, 1, "r").metrics
    m2 = train_round(config, partner, shared, fingerprint, 2, "r").metrics
    assert m1[P.EPSILON] < 3.0
    assert m2[P.EPSILON] == pytest.approx(3.0, rel=0.01)


def test_reply_and_metrics(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, update_clip_norm=1e-3)
    shared, fingerprint = shared_start(config)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert set(reply.arrays) == set(shared)
    assert not any("_module" in k for k in reply.arrays)  # unwrapped from Opacus
    train, test = partner_dataset(config, PartnerSettings(name="p0"), LABELS)
    assert len(train) + len(test) == 60 and abs(len(test) - 12) <= 6  # 20 % held out, by hash
    assert reply.metrics[P.NUM_EXAMPLES] == len(train)  # examples, not batches
    assert reply.metrics[P.UPDATE_CLIPPED] == 1.0
    delta = np.sqrt(sum(np.sum((reply.arrays[k] - shared[k]).astype(np.float64) ** 2)
                        for k in shared))
    assert delta == pytest.approx(1e-3, rel=1e-3)
    # un-noised values about the private batches stay at the partner by default
    assert P.CLIPPED_FRACTION not in reply.metrics and P.TRAIN_LOSS not in reply.metrics
    packed = from_array_record(to_array_record(reply.arrays))
    assert all(packed[k].dtype == v.dtype and np.array_equal(packed[k], v)
               for k, v in reply.arrays.items())
    metrics = evaluate_round(config, PartnerSettings(name="p0"), reply.arrays, fingerprint, 1,
                             "r")
    n = len(test)
    assert metrics[P.NUM_EXAMPLES] == n and 0.0 <= metrics[P.ACCURACY] <= 1.0
    assert P.EVAL_LOSS not in metrics  # counts only, by default
    # per-class counts: right answers are the TPs; each wrong one is one FP and one FN
    count = {kind: sum(metrics[f"{kind}/{label}"] for label in LABELS)
             for kind in (P.TRUE_POSITIVES, P.FALSE_POSITIVES, P.FALSE_NEGATIVES)}
    assert count["tp"] == round(metrics[P.ACCURACY] * n)
    assert count["fp"] == count["fn"] == n - count["tp"]


def test_full_finetune_with_frozen_embeddings(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, finetune="full", learning_rate=1e-3)
    shared, fingerprint = shared_start(config)
    assert not any("embeddings" in k for k in shared)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert reply.metrics[P.EPSILON] > 0


def test_head_only_finetune_sends_only_the_classifier(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, finetune="head")
    shared, fingerprint = shared_start(config)
    assert sorted(shared) == ["classifier.bias", "classifier.weight"]
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert not np.array_equal(reply.arrays["classifier.weight"], shared["classifier.weight"])


def test_budget_refusal_trains_and_records_nothing(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path)
    shared, fingerprint = shared_start(config)
    partner = PartnerSettings(name="p0", max_epsilon=0.5)
    with pytest.raises(BudgetExceededError, match="budget 0.5"):
        train_round(config, partner, shared, fingerprint, 1, "r")
    assert not list((tmp_path / "ledgers").glob("*.json"))


def test_lost_ledger_is_refused(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path)
    shared, fingerprint = shared_start(config)
    reply = train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    for ledger in (tmp_path / "ledgers").glob("*.json"):
        ledger.unlink()
    with pytest.raises(PrivacyError, match="is missing, but its audit log"):
        train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 2, "r",
                    known_history=reply.history)


def test_declared_labels_must_fit_the_embedded_data(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path, labels="neg,pos")
    shared, fingerprint = shared_start(config)
    with pytest.raises(ConfigError, match="do not match the embedded data set"):
        train_round(config, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")


def test_other_base_model_is_refused(tiny_bert: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert, tmp_path)
    shared, _ = shared_start(config)
    with pytest.raises(ModelError, match="frozen weights"):
        train_round(config, PartnerSettings(name="p0"), shared, "0" * 64, 1, "r")


def test_real_partners_draw_noise_nobody_can_replay(tiny_bert: str, tmp_path: Path,
                                                    sentiment_csv: Path) -> None:
    """A simulated partner replays exactly (seeded research runs); a partner with its own data
    seeds sampling and noise from the OS, so the coordinator cannot subtract the noise."""
    def update(partner: PartnerSettings, ledger: str) -> dict[str, np.ndarray]:
        labels = "neg,pos" if partner.has_own_data else ""
        config = tiny_config(tiny_bert, tmp_path, labels=labels, ledger_dir=str(tmp_path / ledger))
        shared, fingerprint = shared_start(config)
        return train_round(config, partner, shared, fingerprint, 1, "r").arrays

    simulated = PartnerSettings(name="p0")
    a, b = update(simulated, "l1"), update(simulated, "l2")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    def own(ledger: str) -> PartnerSettings:  # a real partner places its own ledger
        return PartnerSettings(name="p0", data_path=str(sentiment_csv),
                               ledger_dir=str(tmp_path / ledger), allow_unlearnable_rounds=True)

    c, d = update(own("l3"), "l3"), update(own("l4"), "l4")
    assert not all(np.array_equal(c[k], d[k]) for k in c)

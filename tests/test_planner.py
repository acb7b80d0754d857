"""The DP planner: refusals with their fixes, ε against Opacus, the noise prediction against the
noise Opacus actually adds, and the run-config / CLI surface."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import RunConfig
from common.errors import ConfigError, PrivacyError, UnlearnablePlanError
from common.privacy.planner import (MAX_RUN_RATIO, SIGNAL_FRACTION, auto_batch, plan_dp,
                            update_clip_note)
from simulations.cli import main

LORA_DIMS, POOLED_DIMS = 74_498, 384 * 2 + 2  # bundled MiniLM: LoRA r=8 (q, v) + head; head


def independent_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Opacus' RDP accountant, stepped one DP-SGD step at a time (no shared code path)."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta)


def test_refuses_a_tiny_data_set_with_the_numbers_that_would_pass() -> None:
    with pytest.raises(UnlearnablePlanError) as refused:
        plan_dp(160, 8.0, 1e-5, 3, 2, LORA_DIMS, 1.0, finetune="lora",
                pooled_head_dims=POOLED_DIMS)
    message = str(refused.value)
    assert isinstance(refused.value, PrivacyError)
    assert "at epsilon = 8 with 160 examples expect no learning" in message
    assert "dp-plan-check = false" in message and "pooled-head" in message
    n_needed = int(re.search(r">= (\d+) examples", message).group(1))
    e_needed = float(re.search(r"epsilon >= ([\d.e+]+)", message).group(1))
    assert n_needed > 160 and e_needed > 8
    # the advice holds: N examples pass at ε = 8, and ε = E passes with 160 examples
    assert plan_dp(n_needed, 8.0, 1e-5, 3, 2, LORA_DIMS, 1.0, finetune="lora").learnable
    assert plan_dp(160, e_needed * 1.01, 1e-5, 3, 2, LORA_DIMS, 1.0, finetune="lora").learnable


def test_accepts_a_larger_data_set_and_the_override_runs_a_refused_plan() -> None:
    plan = plan_dp(4000, 8.0, 1e-5, 1, 3, POOLED_DIMS, 1.0)
    assert plan.learnable and plan.run_ratio <= MAX_RUN_RATIO
    assert plan.batch_size == auto_batch(4000, 1, 3, "pooled-head") > 32
    unchecked = plan_dp(160, 8.0, 1e-5, 3, 2, LORA_DIMS, 1.0, finetune="lora", check=False)
    assert not unchecked.learnable


@pytest.mark.parametrize("n, batch, epochs, rounds", [
    (1000, 250, 2, 3),  # large batch, q = 0.25
    (600, 600, 1, 4),  # the whole data set per step, q = 1
    (999, 64, 1, 2),  # q = 1/16 with a last partial batch: 15 steps per epoch in Opacus
    (4000, None, 3, 1),  # the automatic batch on cached features
])
def test_epsilon_of_the_plan_is_opacus_accountant_over_all_rounds(n, batch, epochs, rounds):
    plan = plan_dp(n, 8.0, 1e-5, rounds, epochs, POOLED_DIMS, 1.0, batch_size=batch, check=False)
    loader = DPDataLoader.from_data_loader(
        DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=plan.batch_size))
    assert plan.sample_rate == loader.sample_rate
    assert plan.steps_per_round == len(loader.batch_sampler) * epochs
    expected = independent_epsilon(plan.noise_multiplier, plan.sample_rate,
                                    plan.steps_per_round * rounds, plan.delta)
    assert plan.epsilon == pytest.approx(expected, rel=1e-9)
    assert plan.epsilon == pytest.approx(8.0, rel=0.01)  # σ spends the whole budget


def pure_noise_round(head: nn.Linear, optimizer: torch.optim.Optimizer, plan, clip: float,
                     seed: int | None = None) -> list[float]:
    """One planned round of Opacus DP-SGD at zero loss, so every per-example gradient is 0 and
    each step's gradient is pure noise; returns the noisy gradient's norm per step."""
    n = plan.examples
    data = TensorDataset(torch.randn(n, head.in_features),
                         torch.randint(0, head.out_features, (n,)))
    model, private, loader = PrivacyEngine(accountant="rdp").make_private(
        module=head, optimizer=optimizer, data_loader=DataLoader(data, batch_size=plan.batch_size),
        noise_multiplier=plan.noise_multiplier, max_grad_norm=clip, poisson_sampling=True)
    if seed is not None:
        torch.manual_seed(seed)
    norms = []
    for x, _ in [batch for _ in range(plan.local_epochs) for batch in loader]:
        (model(x).sum() * 0.0).backward()
        private.step()
        norms.append(torch.cat([p.grad.flatten() for p in head.parameters()]).norm().item())
        private.zero_grad(set_to_none=True)
    return norms


def test_predicted_noise_norm_matches_the_noise_opacus_adds() -> None:
    """Each step's gradient is pure noise: its norm must be σ·C·√d / B (tolerance 5 %,
    20 steps, d = 1,285)."""
    n, batch, width, labels, clip = 1000, 100, 256, 5, 0.5
    head = nn.Linear(width, labels)
    d = sum(p.numel() for p in head.parameters())
    plan = plan_dp(n, 8.0, 1e-5, 1, 2, d, clip, batch_size=batch, check=False)
    norms = pure_noise_round(head, torch.optim.SGD(head.parameters(), lr=0.0), plan, clip, seed=0)
    measured = sum(norms) / len(norms)
    assert len(norms) == plan.steps_per_round == 20
    assert measured == pytest.approx(plan.noise_norm, rel=0.05)
    assert plan.step_ratio == pytest.approx(plan.noise_norm / (SIGNAL_FRACTION * clip))
    assert plan.run_ratio == pytest.approx(plan.step_ratio / math.sqrt(20))


def test_noise_update_norm_is_the_floor_of_an_adamw_round_on_pure_dp_noise() -> None:
    """A round of AdamW on Opacus' noise alone moves the weights lr·√(d·T) (the plan's
    noise_update_norm) times 1.13–1.21 in these seeds (the bias-corrected first steps move
    each coordinate a full lr). The floor holds; the excess stays under 30 %."""
    n, batch, width, labels = 1000, 100, 256, 5
    for seed in range(2):
        torch.manual_seed(seed)
        head = nn.Linear(width, labels)
        d = sum(p.numel() for p in head.parameters())
        plan = plan_dp(n, 8.0, 1e-5, 1, 2, d, 1.0, batch_size=batch, learning_rate=0.01,
                       check=False)
        before = torch.cat([p.detach().flatten() for p in head.parameters()])
        pure_noise_round(head, torch.optim.AdamW(head.parameters(), lr=plan.learning_rate),
                         plan, 1.0)
        moved = (torch.cat([p.detach().flatten() for p in head.parameters()]) - before).norm()
        assert plan.noise_update_norm == pytest.approx(0.01 * math.sqrt(d * 20))
        assert 1.0 <= moved.item() / plan.noise_update_norm <= 1.3


def test_an_update_clip_below_the_noise_update_is_noted_with_both_ways_out(capsys) -> None:
    """CoNLL-2003's FFA-LoRA plan (BENCHMARKS.md): lr 2e-2, d = 40,329, 16 steps per round
    moves ≈ 16 (measured 19), so update-clip-norm 10 cuts every update."""
    plan = plan_dp(3709, 8.0, 1e-5, 3, 1, 40_329, 1.0, learning_rate=2e-2)
    assert plan.steps_per_round == 16
    advice = update_clip_note(plan, 10.0)
    assert advice and "update-clip-norm 10 is below the ~16.1" in advice
    assert "at most 0.62 of its length" in advice and "above 16.1 (or 0)" in advice
    assert update_clip_note(plan, 0.0) is None and update_clip_note(plan, 20.0) is None
    assert "moves the weights ~16.1 per round" in plan.describe()
    args = ["plan", "--examples", "3709", "--epsilon", "8", "--rounds", "3", "--local-epochs",
            "1", "--finetune", "lora", "--trainable-dims", "40329"]
    assert main(args) == 0
    assert "update-clip-norm 10 is below" in capsys.readouterr().err
    assert main([*args, "--update-clip-norm", "0"]) == 0
    assert "update-clip-norm" not in capsys.readouterr().err


def test_signal_of_clipped_gradients_is_at_most_c() -> None:
    """The signal side of the model: a step's mean clipped gradient never exceeds C."""
    torch.manual_seed(1)
    grads = torch.randn(64, 300) * 5
    clipped = grads * (1.0 / grads.norm(dim=1, keepdim=True)).clamp(max=1.0)
    assert clipped.mean(dim=0).norm() <= 1.0 + 1e-6


def test_bad_plan_inputs_name_the_key() -> None:
    with pytest.raises(PrivacyError, match=r"delta = 0.01 must be in \(0, 1/160\)"):
        plan_dp(160, 8.0, 1e-2, 3, 2, POOLED_DIMS, 1.0)
    with pytest.raises(ConfigError, match="examples = 0 must be positive"):
        plan_dp(0, 8.0, 1e-5, 3, 2, POOLED_DIMS, 1.0)


def test_run_config_batch_size_and_learning_rate_take_auto_or_a_number() -> None:
    config = RunConfig()
    assert config.batch_size == "auto" and config.learning_rate == "auto"
    assert config.dp_plan_check is True
    assert RunConfig.from_mapping({"batch-size": 64, "learning-rate": 1}).learning_rate == 1.0
    for key, bad, why in [("batch-size", "big", "use 'auto' or an int"),
                          ("batch-size", 0, "must be >= 1"),
                          ("batch-size", 2.5, "expected an int"),
                          ("learning-rate", "fast", "use 'auto' or a float"),
                          ("learning-rate", -1.0, "must be > 0")]:
        with pytest.raises(ConfigError, match=f"'{key}' = .*{re.escape(why)}"):
            RunConfig.from_mapping({key: bad})
    with pytest.raises(ConfigError, match="pooled-head.*token-classification"):
        RunConfig(task="token-classification", finetune="pooled-head")


def test_plan_command_prints_the_plan_and_refuses_with_advice(capsys) -> None:
    common = ["plan", "--epsilon", "8", "--rounds", "3", "--finetune", "pooled-head",
              "--trainable-dims", str(POOLED_DIMS)]
    assert main([*common, "--examples", "4000"]) == 0
    out = capsys.readouterr().out
    assert "n=4000 examples" in out and "sigma=" in out and "over the run" in out
    assert main([*common, "--examples", "60"]) == 2
    assert "expect no learning" in capsys.readouterr().err


def test_a_plan_in_persons_says_persons():
    """Per-person DP plans in persons: q, σ and the refusal count persons, not rows."""
    plan = plan_dp(160, 8.0, 1e-5, 3, 2, 770, 1.0, unit="person")
    assert plan.describe().startswith("n=160 persons,") and plan.sample_rate == 1 / 8
    with pytest.raises(UnlearnablePlanError, match=r"with 160 persons expect no learning.*>= "
                                                  r"\d+ persons"):
        plan_dp(160, 1.0, 1e-5, 3, 2, 770, 1.0, unit="person")


def test_plan_command_counts_ffa_lora_as_the_b_matrices_and_the_head(capsys) -> None:
    """MiniLM (6 layers, hidden 384), LoRA on q and v: A and B are 384 × r each per target."""
    common = ["plan", "--examples", "4800", "--epsilon", "8", "--rounds", "3", "--finetune",
              "pooled-lora", "--lora-r", "2", "--json"]
    assert main(common) == 0
    lora = json.loads(capsys.readouterr().out)["trainable_dims"]
    assert main([*common, "--lora-freeze-a"]) == 0
    ffa = json.loads(capsys.readouterr().out)["trainable_dims"]
    head = 384 * 2 + 2
    assert lora - head == 6 * 2 * 2 * (384 * 2) and ffa - head == (lora - head) // 2


def test_a_partner_logs_the_update_clip_advice_with_its_plan(caplog) -> None:
    """The partner's round plan says, before training, when its updates will be cut."""
    from client.round_plan import round_plan

    model = nn.Linear(4000, 10)  # d = 40,010
    config = RunConfig.from_mapping({"finetune": "lora", "local-epochs": 1, "num-rounds": 3})
    with caplog.at_level("INFO", logger="client.round_plan"):
        assert round_plan(config, "partner-7", model, 3709).steps_per_round == 16
    assert any("partner-7: update-clip-norm 10 is below" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="client.round_plan"):
        round_plan(config.replace(update_clip_norm=40.0), "partner-7", model, 3709)
    assert [r.message for r in caplog.records if "update-clip-norm" in r.message] == []


def test_plan_against_a_ledger_says_what_still_fits(capsys, tmp_path) -> None:
    """`consortium plan --ledger`: the run composed with the partner's spent ε (Opacus'
    accountant over both), and with --max-epsilon the rounds and run ε that still fit."""
    from common.privacy.ledger import PrivacyLedger, Release, epsilon_of

    ledger = PrivacyLedger(tmp_path / "org-a.json", "src")
    ledger.record(Release("earlier", 1, 0.9, 0.1, 40))
    spent = epsilon_of(ledger.history, 1e-5)
    common = ["plan", "--epsilon", "8", "--rounds", "3", "--finetune", "pooled-head",
              "--trainable-dims", str(POOLED_DIMS), "--examples", "4000"]
    assert main([*common, "--ledger", str(ledger.path)]) == 0
    out = capsys.readouterr().out
    assert f"spent so far: epsilon = {spent:.3f}; after this run: " in out
    after = float(out.split("after this run: ")[1].split()[0])
    assert spent < 8 < after  # composed, not the run's 8 alone
    assert main([*common, "--ledger", str(ledger.path), "--max-epsilon", f"{after - 0.5}"]) == 2
    err = capsys.readouterr().err
    assert f"max-epsilon {after - 0.5:g}" in err and "What still fits:" in err and "epsilon <=" in err
    assert main([*common, "--spent", "3", "--max-epsilon", "10"]) == 2
    assert "at most epsilon = 7.000 for the run (by adding" in capsys.readouterr().err
    assert main([*common, "--spent", "1", "--max-epsilon", "10"]) == 0


def test_run_takes_epsilon_like_simulate() -> None:
    import argparse

    from server.cli import run_config

    def args(epsilon):
        return argparse.Namespace(rounds=None, labels="neg,pos", out=None, init_from=None,
                                  monitor=None, epsilon=epsilon, resume=False)

    assert run_config(args(3.0), {}).epsilon == 3.0
    assert run_config(args(float("inf")), {}).dp is False
    assert run_config(args(None), {}).epsilon == 8.0

"""The DP plan of a partner: expected batch, steps, σ and learning rate, and whether it can learn.

Computed from public quantities only (examples n, ε, δ, planned rounds, local epochs, trainable
size d, clipping bound C), before any ε is spent. q and steps are exactly what Opacus'
DPDataLoader runs (``common.privacy.ledger.poisson_schedule``) and σ is calibrated by Opacus' RDP
accountant over all planned rounds (``common.privacy.ledger.calibrate_noise``).

Signal model. A step averages the clipped per-example gradients of an expected batch B = q·n and
adds Gaussian noise of norm ≈ σ·C·√d / B (``noise_norm``). The clipped mean has norm at most C; we
take it to be ``SIGNAL_FRACTION`` · C (s = 0.1: per-example directions largely disagree once
training is under way). ``step_ratio`` = noise / signal of one step. Over the run's T steps the
signal adds up linearly and the noise as √T, so ``run_ratio`` = step_ratio / √T is the
noise-to-signal ratio of the summed update: the number a plan is judged by. Averaging over
partners in FedAvg lowers it further; the plan, being one partner's, ignores that (conservative).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from common.errors import ConfigError, PrivacyError, UnlearnablePlanError
from common.privacy.ledger import calibrate_noise, epsilon_of, poisson_schedule

logger = logging.getLogger(__name__)

SIGNAL_FRACTION = 0.1
# Measured by benchmarks/dp_recipe.py: SST-2, bundled MiniLM, pooled-head, centralized, 3 epochs,
# δ = 1e-5, C = 1, GLUE dev (872; majority 0.509), mean of 2–3 seeds, 2-core CPU.
# - Threshold (--part sweep, n 50…4,000 × ε 1, 3, 8; results/dp_recipe_sweep.json): accuracy
#   falls with run_ratio alone: 0.11 → 0.798, 0.29 → 0.782, 0.57 → 0.758, 0.90 → 0.733,
#   1.15 → 0.699, 1.8 → 0.653, 2.3 → 0.614, 4.5 → 0.588, 8.6 → 0.567, 27 → 0.525. Above 2 a plan
#   keeps less than half of the non-private gain over the majority class (0.798 − 0.509).
#   Today's LoRA recipe fits the same curve: batch 32 (ratio 2.35) 0.607, batch 256 (1.1) 0.703.
# - Batch (--part grid, n = 4,000, ε = 8, best lr each): 64 → 0.794, 256 → 0.799, 1,024 →
#   0.795 (needs lr 0.1), 4,000 (3 steps) → 0.746; non-DP 0.798. 256 is 48 steps over the run.
# - Learning rate at batch 256: 3e-3 0.747, 1e-2 0.799, 3e-2 0.790, 1e-1 0.787, 3e-1 0.757.
#   Momentum SGD (0.794 at lr 0.3) is no better than AdamW: AdamW kept. L2-normalised features
#   0.790 vs raw 0.799: raw kept (the export has no Normalize layer).
MAX_RUN_RATIO = 2.0
MIN_RUN_STEPS = 48
# Largest expected batch per mode: pooled-head trains a linear head on cached features (no
# memory limit worth the name); the others run the encoder per step, where PLATFORM.md measured
# batch 256 at ≈ 120 ex/s with LoRA under DP (and 0.703 vs 0.607 at batch 32).
BATCH_CAP = {"pooled-head": None, "head": 256, "lora": 256, "pooled-lora": 256, "full": 256,
             "bias": 256}
NON_PRIVATE_BATCH = 32  # the non-private recipe (PLATFORM.md: LoRA batch 32, 0.839 on SST-2)
# AdamW learning rate per (finetune, dp). pooled-head: benchmarks/dp_recipe.py (non-DP 1e-2
# 0.798, 1e-3 0.798); under DP 2e-2 (BENCHMARKS.md, session 12: federated at ε = 8 / 3 / 1,
# SST-2 K = 10: 0.789 / 0.787 / 0.787 against 0.779 / 0.772 / 0.718 at 1e-2; AG News 0.860
# against 0.848; centralized, dp_recipe --part schedule: better or level up to n = 1,600, 0.2
# lower at 4,000); lora under DP:
# PLATFORM.md (batch 256: 2e-2 → 0.703, 5e-3 → majority class); pooled-lora:
# benchmarks/encoder_recipe.py (SST-2 4,000, ε = 8, batch 250, H200: 1e-2 → 0.760, 3e-2 → 0.526;
# 2-core CPU: 1e-2 → 0.795, 3e-3 → 0.776; FFA-LoRA at 1e-2 → 0.803; non-DP 5e-4, batch 32, on
# all 48.5 k sentences → 0.876); bias under DP: CoNLL-2003 on a warm start, K = 3, ε = 8,
# batch 247 (BENCHMARKS.md, warm start: 1e-2 → 0.638 after round 1 and 0.698 after 3,
# 2e-2 → 0.630 after round 1; at twice the steps 5e-3 → 0.711, 1e-2 → 0.693; at four times
# 3e-3 → 0.715); the rest: today's defaults.
LEARNING_RATE = {("pooled-head", True): 2e-2, ("pooled-head", False): 1e-2,
                 ("lora", True): 2e-2, ("lora", False): 1e-2, ("full", True): 1e-3,
                 ("full", False): 1e-3, ("head", True): 1e-1, ("head", False): 1e-1,
                 ("pooled-lora", True): 1e-2, ("pooled-lora", False): 5e-4,
                 ("bias", True): 1e-2, ("bias", False): 1e-3}
_MAX_EXAMPLES = 10**8  # search bound for "≥ N examples would"


@dataclass(frozen=True)
class DPPlan:
    """One partner's DP-SGD schedule for the whole run, and its predicted noise-to-signal."""

    examples: int
    epsilon: float  # ε after all planned rounds (the accountant's, for σ as planned)
    delta: float
    rounds: int
    local_epochs: int
    trainable_dims: int
    max_grad_norm: float
    batch_size: int  # the data loader's batch; Poisson sampling draws q·n on average
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    learning_rate: float
    noise_norm: float  # σ·C·√d / (q·n): noise on one step's mean gradient
    step_ratio: float  # noise_norm / (SIGNAL_FRACTION · C)
    run_ratio: float  # step_ratio / √(steps over all rounds)
    unit: str = "example"  # what n counts: examples, or persons (per-person DP samples persons)

    @property
    def expected_batch(self) -> float:
        return self.sample_rate * self.examples

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds

    @property
    def learnable(self) -> bool:
        return self.run_ratio <= MAX_RUN_RATIO

    @property
    def noise_update_norm(self) -> float:
        """The norm of one round's update from the noise alone. AdamW (``make_optimizer``)
        moves each coordinate by about lr per step, in the noise's random direction, so T steps
        walk ≈ lr·√(d·T); the signal adds to that. Public, like the rest of the plan."""
        return self.learning_rate * math.sqrt(self.trainable_dims * self.steps_per_round)

    def describe(self) -> str:
        return (f"n={self.examples} {self.unit}s, expected batch {self.expected_batch:.0f} "
                f"(q={self.sample_rate:.4g}), {self.steps_per_round} steps/round x {self.rounds} "
                f"rounds, sigma={self.noise_multiplier:.3f}, C={self.max_grad_norm:g}, "
                f"lr={self.learning_rate:g}, d={self.trainable_dims}; epsilon={self.epsilon:.3f} "
                f"(delta={self.delta:g}) after all rounds; noise {self.noise_norm:.3g} vs signal "
                f"{SIGNAL_FRACTION * self.max_grad_norm:.3g} per step (ratio "
                f"{self.step_ratio:.3g}), over the run {self.run_ratio:.3g} (refused above "
                f"{MAX_RUN_RATIO:g}); the noise alone moves the weights ~"
                f"{self.noise_update_norm:.3g} per round")


def update_clip_note(plan: DPPlan, update_clip_norm: float) -> str | None:
    """A note when ``update-clip-norm`` is below the update the plan's noise alone makes: every
    round's update is then cut to the clip, which acts like a smaller learning rate. Whether that
    helps depends on what trains (BENCHMARKS.md, CoNLL-2003, ε = 8: FFA-LoRA at lr 2e-2 lost 5.3
    points of F1 to the default clip of 10; the token head at lr 0.1 gained 2.5 from it)."""
    floor = plan.noise_update_norm
    if update_clip_norm <= 0 or floor <= update_clip_norm:
        return None
    return (f"update-clip-norm {update_clip_norm:g} is below the ~{floor:.3g} that this plan's "
            f"noise alone moves the weights per round (lr x sqrt(d x steps/round) = "
            f"{plan.learning_rate:g} x sqrt({plan.trainable_dims} x {plan.steps_per_round})): "
            f"every update will be cut to at most {update_clip_norm / floor:.2g} of its length, "
            f"as if the learning rate were smaller; update-clip-norm above {floor:.3g} (or 0) "
            f"lets the learning rate count")


def auto_batch(n: int, rounds: int, local_epochs: int, finetune: str) -> int:
    """The largest batch that still leaves ``MIN_RUN_STEPS`` steps over the run, within the
    mode's cap: a larger batch lowers the noise per step, too few steps cannot follow the signal."""
    per_epoch = max(1, math.ceil(MIN_RUN_STEPS / (rounds * local_epochs)))
    cap = BATCH_CAP.get(finetune) or n
    return max(1, min(math.ceil(n / per_epoch), cap, n))


def default_learning_rate(finetune: str, dp: bool) -> float:
    return LEARNING_RATE.get((finetune, dp), 1e-2)


def plan_dp(n: int, epsilon: float, delta: float, rounds: int, local_epochs: int,
            trainable_dims: int, max_grad_norm: float, batch_size: int | None = None,
            learning_rate: float | None = None, finetune: str = "pooled-head",
            noise_multiplier: float = 0.0, check: bool = True,
            pooled_head_dims: int | None = None, unit: str = "example") -> DPPlan:
    """Plan DP-SGD for ``n`` examples; ``batch_size``/``learning_rate`` None = chosen here.

    ``noise_multiplier`` > 0 fixes σ (ε is then what it spends). With ``check``, a plan whose
    ``run_ratio`` exceeds ``MAX_RUN_RATIO`` raises UnlearnablePlanError naming what would do:
    the examples N and the ε E at which it would pass, and pooled-head (``pooled_head_dims``).
    """
    _check_inputs(n, epsilon, delta, rounds, local_epochs, trainable_dims, max_grad_norm,
                  batch_size)
    batch = batch_size or auto_batch(n, rounds, local_epochs, finetune)
    q, steps = poisson_schedule(n, batch, local_epochs)
    sigma = noise_multiplier or calibrate_noise(epsilon, delta, q, steps * rounds)
    spent = epsilon_of([(sigma, q, steps * rounds)], delta)
    lr = learning_rate or default_learning_rate(finetune, True)
    noise = sigma * max_grad_norm * math.sqrt(trainable_dims) / (q * n)
    step_ratio = noise / (SIGNAL_FRACTION * max_grad_norm)
    plan = DPPlan(n, spent, delta, rounds, local_epochs, trainable_dims, max_grad_norm, batch,
                  q, steps, sigma, lr, noise, step_ratio, step_ratio / math.sqrt(steps * rounds),
                  unit)
    if check and not plan.learnable:
        raise UnlearnablePlanError(_refusal(plan, epsilon, finetune, batch_size,
                                            pooled_head_dims))
    return plan


def _check_inputs(n: int, epsilon: float, delta: float, rounds: int, local_epochs: int,
                  dims: int, max_grad_norm: float, batch_size: int | None) -> None:
    named = {"examples": (n, n >= 1), "epsilon": (epsilon, epsilon > 0),
             "rounds": (rounds, rounds >= 1), "local-epochs": (local_epochs, local_epochs >= 1),
             "trainable dimensions": (dims, dims >= 1),
             "max-grad-norm": (max_grad_norm, max_grad_norm > 0),
             "batch-size": (batch_size, batch_size is None or batch_size >= 1)}
    for key, (value, ok) in named.items():
        if not ok:
            raise ConfigError(f"DP plan: {key} = {value!r} must be positive")
    if not 0 < delta < 1.0 / n:
        raise PrivacyError(f"DP plan: delta = {delta:g} must be in (0, 1/{n}) for {n} "
                           "training examples; use a smaller delta")


def _passes(n: int, epsilon: float, delta: float, template: DPPlan, finetune: str,
            batch_size: int | None) -> bool:
    """Whether ``n`` examples reach the threshold at ``epsilon``: the largest σ the threshold
    allows must spend no more than ε (one accountant call, no σ search)."""
    batch = batch_size or auto_batch(n, template.rounds, template.local_epochs, finetune)
    q, steps = poisson_schedule(n, batch, template.local_epochs)
    total = steps * template.rounds
    sigma = (MAX_RUN_RATIO * SIGNAL_FRACTION * q * n * math.sqrt(total)
             / math.sqrt(template.trainable_dims))
    return epsilon_of([(sigma, q, total)], delta) <= epsilon


def examples_needed(plan: DPPlan, epsilon: float, finetune: str,
                    batch_size: int | None) -> int | None:
    """Fewest examples (≥ the plan's) at which the plan passes; None past 10^8."""
    low, high = plan.examples, plan.examples * 2
    while not _passes(high, epsilon, plan.delta, plan, finetune,
                      batch_size):
        low, high = high, high * 2
        if high > _MAX_EXAMPLES:
            return None
    while high - low > max(1, low // 50):  # 2 % is precise enough for advice
        mid = (low + high) // 2
        ok = _passes(mid, epsilon, plan.delta, plan, finetune, batch_size)
        low, high = (low, mid) if ok else (mid, high)
    return high


def epsilon_needed(plan: DPPlan) -> float:
    """The ε at which the same schedule reaches the threshold."""
    sigma = plan.noise_multiplier * MAX_RUN_RATIO / plan.run_ratio
    return epsilon_of([(sigma, plan.sample_rate, plan.total_steps)], plan.delta)


def _refusal(plan: DPPlan, epsilon: float, finetune: str, batch_size: int | None,
             pooled_head_dims: int | None) -> str:
    n_needed = examples_needed(plan, epsilon, finetune, batch_size)
    fixes = [f">= {n_needed} {plan.unit}s" if n_needed else "no data size",
             f"epsilon >= {epsilon_needed(plan):.3g}"]
    if finetune != "pooled-head" and pooled_head_dims:
        alt = plan_dp(plan.examples, epsilon, plan.delta, plan.rounds, plan.local_epochs,
                      pooled_head_dims, plan.max_grad_norm, check=False, unit=plan.unit)
        if alt.learnable:
            fixes.append(f'finetune = "pooled-head" (run ratio {alt.run_ratio:.2g})')
    return (f"at epsilon = {epsilon:g} with {plan.examples} {plan.unit}s expect no learning: "
            f"predicted noise-to-signal over the run {plan.run_ratio:.3g} > {MAX_RUN_RATIO:g} "
            f"({plan.describe()}). {', '.join(fixes[:-1])} or {fixes[-1]} would pass; set "
            "dp-plan-check = false to run it anyway. Nothing was trained or spent")

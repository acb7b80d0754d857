"""The pre-flight: before a run's first round (and before each resumed run) the coordinator asks
every partner whether it accepts the whole plan. The partner runs every check a round would run
before spending (its policy, its base model and frozen weights, the planner's verdict on its
real n, its budget over all the rounds still to come; the code check runs before this, in
client.pinning) and answers accept or refuse. It trains nothing, records no release and spends
no ε, so a run that some partners must refuse stops before anyone has spent anything."""

from __future__ import annotations

import torch

from client.partner import open_ledger, person_index
from client.policy import PartnerSettings
from client.received import ReceivedModel
from client.round_plan import round_plan
from common.config import RunConfig
from common.errors import PrivacyError
from common.privacy.ledger import Release


def preflight(config: RunConfig, partner: PartnerSettings, received: ReceivedModel,
              first_round: int) -> None:
    """Raise what the first round would raise before spending (PrivacyError: policy, budget or
    an unlearnable plan; ModelError: other frozen weights; DataError: its data); else accept."""
    partner.check_policy(config, first_round)
    prep = received.build(config, partner, torch.device("cpu"))
    persons = person_index(config, partner, prep.train)
    units, unit = (len(persons), "person") if persons else (len(prep.train), "example")
    plan = round_plan(config, f"{partner.name} (pre-flight)", prep.model, units, unit,
                      partner.plan_check(config))
    if plan is None:  # no DP: nothing to spend
        return
    delta = max(config.delta, partner.delta)
    if delta >= 1.0 / units:
        raise PrivacyError(f"delta = {delta:g} is not below 1 / {units} training {unit}s at "
                           f"{partner.name}; use a smaller delta")
    ledger = open_ledger(config, partner, None)
    step = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    release = Release("pre-flight", first_round, *step, unit=unit)
    ledger.check_budget(release, partner.delta or config.delta, partner.max_epsilon,
                        [step] * (config.num_rounds - first_round)
                        + partner.evaluation_plan(config, first_round))

"""The secure-aggregation parameters that shape a partner's masked input, and each partner's check
of what the coordinator sends it.

A coordinator that could give partners different parameters could unmask one of them: give the
target the normaliser of its own weight and everyone else 10^12, and the others' weights round to
zero, so the unmasked "sum" is the target's update. So every such parameter is a run-config
value (one run config per run, read by each partner from its own ``context.run_config``) or is
checked by each partner against one: the clipping and quantization ranges, the modulus and the
weight normaliser (``max-partner-weight``) must equal the run config's; the threshold must be at
least the run's ``secagg-threshold`` share of the partners in the node list, the node list must
hold this partner and at least 2 (and the partner's own ``min-partners``). A partner refuses on
any mismatch. No flwr here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from common import protocol as P
from common.config import RunConfig
from common.errors import PrivacyError

MOD_RANGE = 2**32  # masks and sums live mod 2^32; masked values travel as uint32


def threshold_for(n: int, share: float) -> int:
    """t = max(2, ceil(share · n)): shares that rebuild one partner's secret."""
    return max(2, math.ceil(share * n - 1e-9))


def setup_parameters(config: RunConfig) -> dict[str, Any]:
    """What shapes every masked input, as the run config fixes it (the coordinator sends these
    at setup; each partner computes the same from its own run config and compares)."""
    return {P.SECAGG_CLIPPING_RANGE: config.secagg_clipping_range or config.update_clip_norm,
            P.SECAGG_QUANTIZATION_RANGE: config.secagg_quantization_range,
            P.SECAGG_MOD_RANGE: MOD_RANGE, P.SECAGG_MAX_WEIGHT: config.max_partner_weight}


def _refuse(stage: str, problems: list[str]) -> None:
    if problems:
        raise PrivacyError(f"secure aggregation, {stage}: refusing the coordinator's parameters: "
                           + "; ".join(problems) + ". Every partner must mask with the same, "
                           "run-config values; the coordinator (or its run config) is at fault")


def check_setup(params: Mapping[str, Any], config: RunConfig) -> None:
    """Every setup parameter equals the run config's, and the threshold is an integer ≥ 2.
    Collects every mismatch before refusing."""
    problems = [f"{key} = {params.get(key)!r}, the run config gives {value!r}"
                for key, value in setup_parameters(config).items() if params.get(key) != value]
    threshold = params.get(P.SECAGG_THRESHOLD)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 2:
        problems.append(f"{P.SECAGG_THRESHOLD} = {threshold!r} is not an integer >= 2")
    _refuse("setup", problems)


def check_nodes(nid: int, nodes: Sequence[int], threshold: int, config: RunConfig,
                min_partners: int = 0) -> None:
    """The share-keys node list: this partner in it, no repeats, at least 2, the run's and this
    partner's ``min-partners``, and a threshold of at least the run's share of them."""
    n, problems = len(nodes), []
    if nid not in nodes:
        problems.append(f"this partner (node {nid}) is not in the node list")
    if len(set(nodes)) != n:
        problems.append("the node list repeats a node")
    fewest = max(2, config.min_partners, min_partners)
    if n < fewest:
        problems.append(f"{n} partner(s) take part; at least {fewest} must (2, the run's "
                        f"min-partners {config.min_partners}, this partner's min-partners "
                        f"{min_partners})")
    need = threshold_for(n, config.secagg_threshold)
    if not need <= threshold <= n:
        problems.append(f"threshold {threshold} for {n} partners; secagg-threshold "
                        f"{config.secagg_threshold:g} needs {need} <= t <= {n}")
    _refuse("share keys", problems)


def check_survivors(active: Sequence[int], config: RunConfig, min_partners: int = 0) -> None:
    """Sign (and so unmask) only a sum of at least the run's and this partner's
    ``min-partners`` updates."""
    fewest = max(2, config.min_partners, min_partners)
    if len(set(active)) < fewest:
        _refuse("consistency check", [
            f"the sum would hold {len(set(active))} update(s); at least {fewest} must be in it "
            f"(the run's min-partners {config.min_partners}, this partner's {min_partners})"])

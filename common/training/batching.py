"""Length-sorted micro-batches: run a batch of texts through the encoder in pieces of similar
length, so each piece is padded only to its own longest text.

A Poisson batch of a few hundred texts holds short and long ones alike; trimmed to its longest
text (``common.training.loop._forward``), most of its token slots are padding the encoder still
computes. Sorted by length and cut into pieces of at most ``token_budget`` padded tokens, the
same texts cost about their real number of tokens, and peak memory is bounded by the budget, not
by the expected batch (the role of Opacus' BatchMemoryManager, but within a logical batch and
without changing it: DP-SGD still clips every text, adds noise once and takes one step per
Poisson batch; see ``common.training.loop.train_dp``).
"""

from __future__ import annotations

import torch

TOKEN_BUDGET = 1024  # padded tokens per piece (16 texts of 64 word pieces): the fastest measured
# on 2 CPU cores (benchmarks/batching.py: 3.9 × on SST-2 phrases, 3.5 × on CoNLL-2003 sentences)


def text_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Tokens per text (the attention mask's row sums), at least 1."""
    return mask.sum(dim=1).clamp(min=1)


def micro_batches(mask: torch.Tensor, token_budget: int = TOKEN_BUDGET) -> list[torch.Tensor]:
    """Row indices of a batch, longest texts first, cut into pieces whose rows × longest text is
    at most ``token_budget`` (a piece holds at least one row). Every row is in exactly one piece.
    ``token_budget`` 0 keeps the batch whole."""
    if token_budget < 0:
        raise ValueError(f"token_budget must be ≥ 0 (0 = no split), got {token_budget}")
    rows = len(mask)
    if token_budget == 0 or rows == 0:
        return [torch.arange(rows)]
    lengths = text_lengths(mask)
    order = torch.argsort(lengths, descending=True, stable=True)
    pieces, start = [], 0
    while start < rows:
        longest = int(lengths[order[start]])  # sorted: the piece's first row is its longest
        size = max(1, token_budget // longest)
        pieces.append(order[start:start + size])
        start += size
    return pieces


def sorted_batches(mask: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Row indices in batches of ``batch_size`` texts of similar length (for evaluation: the
    caller puts results back at these indices, so the order of the data is kept)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    order = torch.argsort(text_lengths(mask), stable=True)
    return list(torch.split(order, batch_size))

"""The privacy audit's canaries and maths: membership-inference AUC and secret-sharer exposure.

A canary is a unique synthetic record: a sentence of random vocabulary words with a random label,
so only memorisation can make a model fit it. Half of the canaries are inserted into a partner's
training data (each ``repeats`` times), half are held out; a model that leaks gives the inserted
ones lower loss. Exposure (Carlini et al., "The Secret Sharer", 2019) ranks an inserted canary's
loss among ``candidates`` fresh alternatives of the same form under the same label:
exposure = log2(#candidates) − log2(rank), where #candidates counts the canary itself. Pure
functions on numpy arrays; no flwr, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from common.data.text import TextDataset
from common.errors import ConfigError, DataError


@dataclass(frozen=True)
class AuditSettings:
    """How many canaries, how often each is inserted, and how they look."""

    canaries: int = 64  # inserted; as many again are held out
    repeats: int = 4  # copies of each inserted canary in the training data
    candidates: int = 1000  # alternatives each inserted canary is ranked against (exposure)
    words: int = 5  # random vocabulary words per canary sentence
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("canaries", 2), ("repeats", 1), ("candidates", 1), ("words", 1),
                          ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"audit {name} = {value!r} must be an integer >= {low}")


@dataclass(frozen=True)
class Canaries:
    inserted: TextDataset
    held_out: TextDataset
    candidates: tuple[str, ...]  # texts only: each is scored under the canary's own label


def canary_vocabulary(vocab: Iterable[str]) -> tuple[str, ...]:
    """Whole ASCII words of a tokenizer's vocabulary (no ``##`` pieces, no [SPECIAL] tokens),
    sorted, so the same tokenizer and seed give the same canaries."""
    words = sorted({w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 3})
    if len(words) < 2:
        raise DataError(f"the tokenizer has {len(words)} whole alphabetic words of 3+ letters; "
                        "canaries need at least 2 — use a base model with a word vocabulary")
    return tuple(words)


def draw_sentences(vocabulary: Sequence[str], count: int, words: int,
                   rng: np.random.Generator, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """``count`` distinct random sentences of ``words`` words, none of them in ``exclude``."""
    space = float(len(vocabulary)) ** words
    if space < 2 * count:
        raise ConfigError(f"{count} distinct canaries of {words} words from a {len(vocabulary)}-"
                          "word vocabulary is too close to all there are; use more --words or "
                          "fewer canaries / candidates")
    taken, out = set(exclude), []
    while len(out) < count:
        text = " ".join(vocabulary[i] for i in rng.integers(len(vocabulary), size=words))
        if text not in taken:
            taken.add(text)
            out.append(text)
    return tuple(out)


def make_canaries(vocabulary: Sequence[str], label_names: tuple[str, ...],
                  settings: AuditSettings, exclude: Iterable[str] = ()) -> Canaries:
    """Inserted and held-out canaries drawn from one distribution (the same label multiset),
    plus exposure candidates; every text unique and absent from ``exclude``."""
    rng = np.random.default_rng([settings.seed, 0xCA7A])
    n = settings.canaries
    texts = draw_sentences(vocabulary, 2 * n + settings.candidates, settings.words, rng, exclude)
    # held-out canaries get the inserted ones' labels: a model's label prior (skewed data) then
    # shifts both groups' losses alike instead of passing for membership
    labels = tuple(int(y) for y in rng.integers(len(label_names), size=n)) * 2
    both = TextDataset(texts[: 2 * n], labels, label_names)
    return Canaries(both.subset(range(n)), both.subset(range(n, 2 * n)), texts[2 * n:])


def insert_canaries(data: TextDataset, canaries: TextDataset, repeats: int,
                    rng: np.random.Generator) -> TextDataset:
    """A new, shuffled data set: ``data`` plus ``repeats`` copies of each canary.

    Every row also gets a person: the data's own (its person column), else one per row; the
    copies of canary j all belong to the person ``canary-j`` — a canary *person* with
    ``repeats`` rows, which per-person DP protects as one unit and per-example DP as many."""
    if canaries.label_names != data.label_names:
        raise DataError(f"canary labels {list(canaries.label_names)} differ from the data's "
                        f"{list(data.label_names)}")
    texts = data.texts + canaries.texts * repeats
    labels = data.labels + canaries.labels * repeats
    persons = ((data.persons or tuple(f"row-{i}" for i in range(len(data))))
               + tuple(f"canary-{j}" for j in range(len(canaries))) * repeats)
    order = rng.permutation(len(texts))
    return TextDataset(tuple(texts[i] for i in order), tuple(labels[i] for i in order),
                       data.label_names, persons=tuple(persons[i] for i in order))


def losses_at(log_probs: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Cross-entropy of each row at its label, from (examples, labels) log-probabilities."""
    return -np.asarray(log_probs)[np.arange(len(labels)), np.asarray(labels, dtype=int)]


def roc_auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(score of a random member > score of a random non-member), ties counting one half
    (the Mann–Whitney U statistic over all pairs). Higher score = "member"."""
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if not len(m) or not len(n):
        raise ValueError("roc_auc needs at least one member and one non-member score")
    greater = (m[:, None] > n[None, :]).sum()
    ties = (m[:, None] == n[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(m) * len(n)))


def auc_standard_error(auc: float, n_members: int, n_nonmembers: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from n1 and n2 scores."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_members - 1) * (q1 - auc * auc)
           + (n_nonmembers - 1) * (q2 - auc * auc)) / (n_members * n_nonmembers)
    return math.sqrt(max(var, 0.0))


def roc_curve(members: Sequence[float],
              nonmembers: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over every threshold, from (0,0) to (1,1)."""
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    thresholds = np.unique(np.concatenate([m, n]))[::-1]
    fpr = [0.0] + [float((n >= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((m >= t).mean()) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def exposure(canary_loss: float, candidate_losses: Sequence[float]) -> float:
    """log2(#candidates) − log2(rank) of the canary among itself and the alternatives; rank 1 =
    lowest loss, ties with the canary counting one half."""
    alt = np.asarray(candidate_losses, dtype=float)
    rank = 1 + (alt < canary_loss).sum() + 0.5 * (alt == canary_loss).sum()
    return float(math.log2(len(alt) + 1) - math.log2(rank))


def exposures(canary_losses: Sequence[float], canary_labels: Sequence[int],
              candidate_log_probs: np.ndarray) -> np.ndarray:
    """Exposure of each canary against every candidate text scored under the canary's label."""
    return np.array([exposure(loss, -candidate_log_probs[:, label])
                     for loss, label in zip(canary_losses, canary_labels)])


def summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max())}

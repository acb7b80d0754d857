"""The embedded default data set: short topic sentences, generated, so the demo needs no download.

Four topics; each partner gets its own deterministic sample with a different label mix (the
non-IID situation federation exists for). Sentences mix topic words with distractors from other
topics, so a model must learn something to beat chance.
"""

from __future__ import annotations

import numpy as np

from common.data.text import TextDataset

LABELS = ("business", "health", "science", "sports")
_TOPIC_WORDS = {
    "business": ["market", "shares", "profit", "investors", "merger", "revenue", "bank",
                 "earnings", "startup", "retail", "tariffs", "quarterly sales"],
    "health": ["patients", "hospital", "vaccine", "doctors", "clinic", "diet", "therapy",
               "nurses", "infection", "surgery", "symptoms", "medicine"],
    "science": ["researchers", "telescope", "genome", "physics", "laboratory", "climate",
                "experiment", "particles", "fossil", "chemistry", "satellite", "robots"],
    "sports": ["match", "coach", "league", "goal", "tournament", "striker", "championship",
               "players", "stadium", "season", "referee", "medal"],
}
_SUBJECTS = ["the report", "a new study", "officials", "the city", "local news", "experts",
             "the committee", "observers", "a spokesperson", "the board"]
_VERBS = ["says", "notes", "suggests", "confirms", "questions", "highlights", "warns about",
          "celebrates", "reviews", "announces"]
_FILLER = ["this week", "on monday", "after months of debate", "in a statement",
           "according to sources", "late on friday", "for the first time", "again"]
_MIX = np.array([0.5, 0.25, 0.15, 0.10])


def label_mix(partner_id: int) -> np.ndarray:
    """Label proportions of a partner: the same skew, rotated so partners differ."""
    return np.roll(_MIX, partner_id % len(LABELS))


def _sentence(rng: np.random.Generator, label: int) -> str:
    topic = LABELS[label]
    words = list(rng.choice(_TOPIC_WORDS[topic], size=2, replace=False))
    if rng.random() < 0.5:  # a distractor from another topic
        other = LABELS[(label + 1 + int(rng.integers(len(LABELS) - 1))) % len(LABELS)]
        words.append(str(rng.choice(_TOPIC_WORDS[other])))
    rng.shuffle(words)
    return (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {words[0]} and {' '.join(words[1:])} "
            f"{rng.choice(_FILLER)}")


def synthetic_partner_data(partner_id: int, num_examples: int, seed: int) -> TextDataset:
    """The embedded data of one partner; the same arguments always give the same data."""
    rng = np.random.default_rng([seed, partner_id])
    labels = rng.choice(len(LABELS), size=num_examples, p=label_mix(partner_id))
    texts = tuple(_sentence(rng, int(y)) for y in labels)
    return TextDataset(texts, tuple(int(y) for y in labels), LABELS)

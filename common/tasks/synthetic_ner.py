"""The embedded NER demo data: generated sentences with people, organisations and places, so
``task = "token-classification"`` runs without any download.

Entities are one or two words (two-word ones exercise I- tags); some names are both a person's
and a place's (``jordan``, ``georgia``), so only the context tells them apart. Each partner gets
its own deterministic sample with a different mix of sentence templates.
"""

from __future__ import annotations

import numpy as np

from common.tasks.tokens import TokenDataset, tag_names

ENTITY_TYPES = ("LOC", "ORG", "PER")
TAGS = tag_names(ENTITY_TYPES)
_NAMES = {
    "PER": ["alice", "bruno", "chen wei", "dana", "jordan", "georgia", "maria lopez", "omar",
            "priya", "tom baker", "yuki", "sam"],
    "ORG": ["acme corp", "globex", "the red cross", "initech", "unicef", "city council",
            "northwind bank", "orbit labs", "the union", "hooli"],
    "LOC": ["paris", "lagos", "jordan", "georgia", "new york", "lima", "oslo", "cape town",
            "the river", "berlin", "kyoto"],
}
# {X} marks an entity slot of type X; the rest are plain words tagged O
_TEMPLATES = [
    "{PER} flew to {LOC} on monday",
    "{PER} joined {ORG} last year",
    "{ORG} opened an office in {LOC}",
    "officials in {LOC} met {PER} and {PER}",
    "{PER} says {ORG} will hire more staff",
    "the report from {ORG} praises {LOC}",
    "a storm hit {LOC} this week",
    "{PER} left {ORG} for {ORG}",
]


def _mix(partner_id: int) -> np.ndarray:
    weights = np.roll(np.linspace(2.0, 1.0, len(_TEMPLATES)), partner_id)
    return weights / weights.sum()


def _sentence(rng: np.random.Generator, template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    words: list[str] = []
    tags: list[str] = []
    for piece in template.split():
        if piece.startswith("{") and piece.endswith("}"):
            kind = piece[1:-1]
            entity = str(rng.choice(_NAMES[kind])).split()
            words.extend(entity)
            tags.extend([f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1))
        else:
            words.append(piece)
            tags.append("O")
    return tuple(words), tuple(tags)


def vocabulary() -> set[str]:
    """Every word the generator can emit (test fixtures build tokenizers from it)."""
    words = {w for t in _TEMPLATES for w in t.split() if not w.startswith("{")}
    words.update(w for names in _NAMES.values() for name in names for w in name.split())
    return words


def synthetic_ner_data(partner_id: int, num_examples: int, seed: int) -> TokenDataset:
    """The embedded NER data of one partner; the same arguments always give the same data."""
    rng = np.random.default_rng([seed, partner_id, 7])
    ids = {t: i for i, t in enumerate(TAGS)}
    picks = rng.choice(len(_TEMPLATES), size=num_examples, p=_mix(partner_id))
    sentences = [_sentence(rng, _TEMPLATES[int(k)]) for k in picks]
    return TokenDataset(tuple(w for w, _ in sentences),
                        tuple(tuple(ids[t] for t in tags) for _, tags in sentences), TAGS)

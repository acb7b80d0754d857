"""De-identification at the partner: personal data masked in its texts before tokenization.

    deid = Deidentifier()              # loads the engine once (a few seconds, mostly imports)
    masked, counts = deid.mask(texts)  # ("<PERSON> called on <DATE_TIME>", ...), {"PERSON": 1, ...}

Microsoft Presidio's analyzer finds the spans and its anonymizer replaces each with ``<TYPE>``.
Presidio's pattern recognizers do the work (e-mail, phone, URL, IP, dates, card, IBAN, SSN, ITIN,
bank account, passport, driver licence, NHS number, UK postcode); names, street addresses and MRNs
come from the small recognizers in ``common.deid.recognizers`` (names from a list: no NER model
can be installed here, so a name outside the list is missed unless a title or a listed first name
stands before it; see BENCHMARKS.md "De-identification recall").

The NLP engine is Presidio's SpacyNlpEngine around ``spacy.blank("en")`` plus spaCy's lookup
lemmatizer on an empty table (lemma = the word): tokens and lemmas, which Presidio's context
enhancer needs to raise weak patterns ("account 12345678") over the threshold, and no model to
download. Nothing reaches the network: tldextract reads its bundled suffix list.

Masked spans are never logged nor returned; only their counts per type. Presidio's own loggers are
held at WARNING, since at DEBUG they print words around a match.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Sequence

from common.errors import ConfigError

logger = logging.getLogger(__name__)

ENTITY_TYPES = (
    "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "STREET_ADDRESS", "UK_POSTCODE", "DATE_TIME",
    "US_SSN", "US_ITIN", "CREDIT_CARD", "IBAN_CODE", "US_BANK_NUMBER", "US_PASSPORT",
    "US_DRIVER_LICENSE", "UK_NHS", "MEDICAL_RECORD_NUMBER", "URL", "IP_ADDRESS",
)
INSTALL_HINT = 'pip install "consortium[deid]" (in a checkout: pip install -e ".[deid]")'
PRESIDIO_LOGGERS = ("presidio-analyzer", "presidio-anonymizer", "decision_process")
LANGUAGE = "en"


def _require_presidio() -> None:
    try:
        import faker  # noqa: F401
        import presidio_analyzer  # noqa: F401
        import presidio_anonymizer  # noqa: F401
        import spacy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"de-identification needs Presidio, spaCy and Faker ({exc.name} is "
                          f"missing): {INSTALL_HINT}") from exc


def check_installed() -> None:
    """The same ConfigError as building a Deidentifier would give, without importing anything
    (a run's preflight: spaCy imports torch)."""
    import importlib.util

    for module in ("presidio_analyzer", "presidio_anonymizer", "spacy", "faker"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"deidentify = true needs Presidio, spaCy and Faker ({module} is "
                              f"missing): {INSTALL_HINT}")


def _blank_english() -> Any:
    """spaCy's blank English pipeline with a lookup lemmatizer on an empty table: every word is
    its own lemma (enough for Presidio's context words), and nothing is downloaded."""
    import spacy
    from spacy.lookups import Lookups

    nlp = spacy.blank(LANGUAGE)
    lookups = Lookups()
    lookups.add_table("lemma_lookup", {})
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"}).initialize(lookups=lookups)
    return nlp


def _nlp_engine() -> Any:
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    engine = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "blank"}])
    engine.nlp = {LANGUAGE: _blank_english()}  # loaded: Presidio then never calls spacy.load
    return engine


class Deidentifier:
    """Masks personal data in texts; build it once per process (the engine loads in seconds).

    ``score_threshold``: the lowest Presidio score that is masked. 0.4 keeps weak patterns
    (a bare 9-digit number as passport or SSN) unless a context word stands near them.
    """

    def __init__(self, score_threshold: float = 0.4) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold={score_threshold!r}: pick a value in [0, 1]")
        _require_presidio()
        from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
        from presidio_anonymizer import AnonymizerEngine

        from common.deid.recognizers import recognizers

        for name in PRESIDIO_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING,
                                                 logging.getLogger(name).level))
        registry = RecognizerRegistry(recognizers=recognizers(), supported_languages=[LANGUAGE])
        analyzer = AnalyzerEngine(registry=registry, nlp_engine=_nlp_engine(),
                                  supported_languages=[LANGUAGE])
        self.score_threshold = score_threshold
        self._analyzer = BatchAnalyzerEngine(analyzer)
        self._anonymizer = AnonymizerEngine()

    def mask(self, texts: Sequence[str]) -> tuple[tuple[str, ...], dict[str, int]]:
        """Each text with its personal data replaced by ``<TYPE>``, and the number of spans
        masked per entity type (over all texts; types with none are left out)."""
        if isinstance(texts, str):
            raise TypeError("mask() takes a sequence of texts; wrap one text in a list")
        texts = list(texts)
        found = self._analyzer.analyze_iterator(texts, language=LANGUAGE,
                                                entities=list(ENTITY_TYPES),
                                                score_threshold=self.score_threshold)
        masked: list[str] = []
        counts: Counter[str] = Counter()
        for text, results in zip(texts, found):
            if not results:
                masked.append(text)
                continue
            engine_result = self._anonymizer.anonymize(text=text, analyzer_results=results)
            masked.append(engine_result.text)
            counts.update(item.entity_type for item in engine_result.items)
        logger.debug("masked %d spans in %d texts", sum(counts.values()), len(masked))
        return tuple(masked), dict(sorted(counts.items()))

"""The Presidio recognizers behind ``common.deid.deidentify``: Presidio's own pattern recognizers
where it has one, and a few small pattern recognizers of ours where it has none without an NER
model.

Imported only by ``Deidentifier`` (it imports presidio, spaCy and Faker at load).

- PERSON: a case-sensitive deny list of the first and last names of Faker's en_US person provider
  (``faker.providers.person.en_US``: 690 first names, 1,000 last names, 1,584 distinct), less
  the 27 that are also common English words (spaCy's stop words, Faker's en_US lorem words:
  "May", "Green", "Little", ...): 1,557 names. Plus a listed first name followed by one or two
  capitalised words, and a title (Dr, Mrs, ...) followed by one to three. A name outside the list
  that stands alone is missed (there is no NER model); a listed name that starts a sentence as an
  ordinary word ("Frank blood in the bag") is masked.
- STREET_ADDRESS: house number (or a leading flat / unit), street words, a street type (the 225
  USPS suffixes of Faker's en_US address provider, plus St, Ave, Rd, ...), then optional unit,
  city and "ST 12345". Presidio has no address recognizer without NER; this one is ours.
- UK_POSTCODE: Presidio's UK postcode pattern, matched in upper case only and so trusted without
  a context word (Presidio's own recognizer is case-blind and needs one).
- MEDICAL_RECORD_NUMBER: "MRN 12345678", "MR# ...", "medical record number ...".
- DATE_TIME: Presidio's DateRecognizer, with month-name dates ("March 4, 2021", "4 Mar 2021")
  added to its numeric patterns, and "dob" / "born" among its context words.
- E-mail addresses: Presidio's EmailRecognizer, its domain check on tldextract's bundled public
  suffix list (no fetch, no cache written); the module-level tldextract would try the network.
"""

from __future__ import annotations

import re

import tldextract
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, DateRecognizer,
                                                      EmailRecognizer, IbanRecognizer,
                                                      IpRecognizer, NhsRecognizer,
                                                      PhoneRecognizer, UkPostcodeRecognizer,
                                                      UrlRecognizer, UsBankRecognizer,
                                                      UsItinRecognizer, UsLicenseRecognizer,
                                                      UsPassportRecognizer, UsSsnRecognizer)

CASE_SENSITIVE = re.DOTALL | re.MULTILINE
NAME_WORD = r"\p{Lu}(?:\p{L}|['’-]\p{L})+"  # Presidio compiles with `regex`: \p{..} works
TITLE = r"\b(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof)\.?"
MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
         r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
STREET_ABBREVIATIONS = ("St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Pl", "Sq", "Ter", "Pkwy",
                        "Hwy", "Cir", "Trl", "Close")
CITY_STATE_ZIP = (r"(?:,\s+\p{Lu}\p{Ll}+(?:\s+\p{Lu}\p{Ll}+){0,2}"
                  r"(?:,?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?)?)?")
UNIT = (r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Studio|Floor|Room)\.?\s*#?\s*"
        r"(?:\d+[A-Za-z]?|[A-Z]\d*)\b")
PO_BOX = r"\bP\.?\s?O\.?\s+Box\s+\d+\b"
MRN = (r"\b(?:MRN|MR#|medical record(?: number| no\.?| #)?)\s*[:#]?\s*"
       r"[A-Z]{0,3}-?\d{5,10}\b")
MONTH_DATES = [
    Pattern("month d, yyyy", rf"\b{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", 0.6),
    Pattern("d month yyyy", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTH},?\s+\d{{4}}\b",
            0.6),
    Pattern("month yyyy", rf"\b{MONTH}\s+\d{{4}}\b", 0.5),
    Pattern("month d", rf"\b{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\b", 0.4),
]


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer whose domain check never fetches the public suffix list."""

    def __init__(self) -> None:
        super().__init__()
        self._domains = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())

    def validate_result(self, pattern_text: str) -> bool:
        return self._domains(pattern_text).fqdn != ""


def street_pattern() -> str:
    """A house number (or a unit before the street), one to three street-name words, a street
    type (USPS suffix or abbreviation), then optional unit, city and "ST 12345"."""
    from faker.providers.address.en_US import Provider

    types = "|".join(sorted({*Provider.street_suffixes, *STREET_ABBREVIATIONS}, key=len,
                            reverse=True))
    return (rf"(?:\b{UNIT},?\s+(?:\d{{1,6}}[A-Z]?\s+)?|\b\d{{1,6}}[A-Z]?\s+)"
            r"(?:(?:[NSEW]|North|South|East|West)\.?\s+)?"
            rf"(?:(?:\p{{Lu}}\p{{Ll}}+|\d{{1,3}}(?:st|nd|rd|th))\s+){{1,3}}(?:{types})\b\.?"
            rf"(?:,?\s+{UNIT})?{CITY_STATE_ZIP}")


def person_names() -> list[str]:
    """Faker's en_US first and last names, sorted, less the common English words."""
    from faker.providers.person.en_US import Provider

    return _names({*Provider.first_names, *Provider.last_names})


def first_names() -> list[str]:
    """The first names of ``person_names``."""
    from faker.providers.person.en_US import Provider

    return _names(set(Provider.first_names))


def _names(names: set[str]) -> list[str]:
    """``names`` less spaCy's English stop words and Faker's en_US lorem words ("Green",
    "Little", "Short", ...): as a sentence's first word they are far more often not a name."""
    from faker.providers.lorem.en_US import Provider as Lorem
    from spacy.lang.en.stop_words import STOP_WORDS

    common = {*STOP_WORDS, *(w.lower() for w in Lorem.word_list)}
    return sorted(n for n in names if n.lower() not in common)


def person_recognizer() -> PatternRecognizer:
    firsts = "|".join(re.escape(n) for n in first_names())
    return PatternRecognizer(
        supported_entity="PERSON", name="NameListRecognizer", deny_list=person_names(),
        patterns=[Pattern("listed first name + capitalised word",
                          rf"\b(?:{firsts})(?:\s+{NAME_WORD}){{1,2}}\b", 0.85),
                  Pattern("title + name", rf"{TITLE}(?:\s+{NAME_WORD}){{1,3}}", 0.85)],
        global_regex_flags=CASE_SENSITIVE)


def recognizers() -> list[EntityRecognizer]:
    """Every recognizer the de-identifier runs, for English."""
    date = DateRecognizer(patterns=DateRecognizer.PATTERNS + MONTH_DATES,
                          context=DateRecognizer.CONTEXT + ["dob", "born", "birth"])
    postcode = PatternRecognizer(
        supported_entity="UK_POSTCODE", name="UkPostcodeUpperCaseRecognizer",
        patterns=[Pattern("UK postcode, upper case", UkPostcodeRecognizer.PATTERNS[0].regex, 0.5)],
        context=UkPostcodeRecognizer.CONTEXT, global_regex_flags=CASE_SENSITIVE)
    address = PatternRecognizer(
        supported_entity="STREET_ADDRESS", name="StreetAddressRecognizer",
        patterns=[Pattern("street address", street_pattern(), 0.7),
                  Pattern("PO box", PO_BOX + CITY_STATE_ZIP, 0.7)],
        global_regex_flags=CASE_SENSITIVE)
    mrn = PatternRecognizer(supported_entity="MEDICAL_RECORD_NUMBER", name="MrnRecognizer",
                            patterns=[Pattern("labelled MRN", MRN, 0.85)])
    return [
        person_recognizer(), OfflineEmailRecognizer(), PhoneRecognizer(), UrlRecognizer(),
        IpRecognizer(), date, CreditCardRecognizer(), IbanRecognizer(), UsSsnRecognizer(),
        UsItinRecognizer(), UsBankRecognizer(), UsPassportRecognizer(), UsLicenseRecognizer(),
        NhsRecognizer(), postcode, address, mrn,
    ]

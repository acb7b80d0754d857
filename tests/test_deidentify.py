"""common.deid.deidentify: planted personal data is masked, counted per type, never logged, and the
engine neither needs a downloaded model nor touches the network."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.deid.deidentify import ENTITY_TYPES, Deidentifier
from common.errors import ConfigError

PLANTED = [  # (note, the planted value, the type it must be masked as)
    ("Patient Linda Martinez reported chest pain.", "Linda Martinez", "PERSON"),
    ("Seen by Dr. Okonkwo in the morning clinic.", "Okonkwo", "PERSON"),
    ("Reach her on (212) 555-0187 after 5 pm.", "555-0187", "PHONE_NUMBER"),
    ("Results sent to l.martinez@example.com today.", "l.martinez@example.com", "EMAIL_ADDRESS"),
    ("SSN 536-22-8471 is on file.", "536-22-8471", "US_SSN"),
    ("Paid with card 4111 1111 1111 1111 at the desk.", "4111 1111 1111 1111", "CREDIT_CARD"),
    ("Refund to IBAN GB82 WEST 1234 5698 7654 32 please.", "GB82 WEST 1234 5698 7654 32",
     "IBAN_CODE"),
    ("Debit from checking account 000123456789 monthly.", "000123456789", "US_BANK_NUMBER"),
    ("Passport number 912803456 was checked.", "912803456", "US_PASSPORT"),
    ("Driver's license D1234567 scanned at intake.", "D1234567", "US_DRIVER_LICENSE"),
    ("MRN 12345678, bed 4.", "12345678", "MEDICAL_RECORD_NUMBER"),
    ("NHS number 943 476 5919 confirmed.", "943 476 5919", "UK_NHS"),
    ("Lives at 450 W 33rd Ave, Apt 5, New York, NY 10001 with her son.",
     "450 W 33rd Ave, Apt 5, New York, NY 10001", "STREET_ADDRESS"),
    ("Moved to 12 Oak Street last year.", "12 Oak Street", "STREET_ADDRESS"),
    ("Post to Flat 3, 12 Mill Lane, Leeds LS6 2QR.", "LS6 2QR", "UK_POSTCODE"),
    ("Admitted 03/14/2024 for observation.", "03/14/2024", "DATE_TIME"),
    ("Born March 3, 1961 in a rural area.", "March 3, 1961", "DATE_TIME"),
    ("Portal: https://portal.example-clinic.org/patient/8841 for the results.",
     "portal.example-clinic.org", "URL"),
    ("Login from 192.168.10.4 flagged.", "192.168.10.4", "IP_ADDRESS"),
    ("Login from 2001:db8::8a2e:370:7334 flagged.", "2001:db8::8a2e:370:7334", "IP_ADDRESS"),
]
ORDINARY = ("the patient reported pain in the left knee after 2 weeks",
            "BP 120/80, pulse 72, HbA1c 7.2% on the last check.",
            "Started metformin 500 mg twice daily; review in 6 weeks.",
            "The account was opened with a deposit of $1,250.00 on a weekday.")


@pytest.fixture(scope="module")
def deid_offline():
    """One engine for the module, built and first used with every socket refused; returns it
    and the network calls that were tried."""
    tried: list[object] = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("the network is off in this test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        deid = Deidentifier()
        deid.mask(["mail a.b@example.co.uk or see https://example.org/x"])
    return deid, tried


@pytest.fixture
def deid(deid_offline):
    return deid_offline[0]


def test_neither_building_nor_masking_touches_the_network(deid_offline):
    assert deid_offline[1] == []


@pytest.mark.parametrize("note, value, entity", PLANTED, ids=[f"{e}-{i}" for i, (_, _, e) in
                                                            enumerate(PLANTED)])
def test_planted_pii_is_masked_and_gone_from_the_output(deid, note, value, entity):
    (masked,), counts = deid.mask([note])
    assert value not in masked
    assert f"<{entity}>" in masked
    assert counts.get(entity, 0) >= 1


def test_counts_per_type_on_a_hand_built_example(deid):
    texts = ["Mary Johnson (MRN 48213377) was seen on 03/14/2024 by Dr. Okafor.",
             "Call (212) 555-0187 or write to mary.johnson@example.org.",
             "SSN 536-22-8471, card 4111 1111 1111 1111, login from 10.20.30.40.",
             "the patient reported pain"]
    masked, counts = deid.mask(texts)
    assert masked == ("<PERSON> (<MEDICAL_RECORD_NUMBER>) was seen on <DATE_TIME> by <PERSON>.",
                      "Call <PHONE_NUMBER> or write to <EMAIL_ADDRESS>.",
                      "SSN <US_SSN>, card <CREDIT_CARD>, login from <IP_ADDRESS>.",
                      "the patient reported pain")
    assert counts == {"CREDIT_CARD": 1, "DATE_TIME": 1, "EMAIL_ADDRESS": 1, "IP_ADDRESS": 1,
                      "MEDICAL_RECORD_NUMBER": 1, "PERSON": 2, "PHONE_NUMBER": 1, "US_SSN": 1}
    assert set(counts) <= set(ENTITY_TYPES)


def test_ordinary_words_and_numbers_are_not_masked(deid):
    masked, counts = deid.mask(ORDINARY)
    assert masked == ORDINARY
    assert counts == {}


def test_names_are_matched_case_sensitively(deid):
    # "Grant" and "Rose" are on the name list; lower case they are ordinary words
    (masked,), _ = deid.mask(["the grant covers a rose garden"])
    assert masked == "the grant covers a rose garden"


def test_spans_are_never_logged(deid, caplog):
    with caplog.at_level(logging.DEBUG):
        deid.mask([note for note, _, _ in PLANTED])
    for _, value, _ in PLANTED:
        assert value not in caplog.text


def test_mask_takes_a_sequence_not_one_string(deid):
    with pytest.raises(TypeError, match="sequence of texts"):
        deid.mask("Linda Martinez")  # type: ignore[arg-type]
    assert deid.mask([]) == ((), {})


def test_a_threshold_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match="score_threshold=1.5"):
        Deidentifier(score_threshold=1.5)


def test_without_presidio_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r'consortium\[deid\]') as caught:
        Deidentifier()
    assert "presidio_analyzer" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_importing_the_module_does_not_import_presidio():
    code = ("import sys, common.deid.deidentify; "
            "print(sorted(m for m in ('presidio_analyzer', 'spacy', 'faker') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"

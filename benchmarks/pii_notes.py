"""A small labelled PII test set for the de-identification benchmark: synthetic clinical and bank
notes with planted personal data and their gold spans, and notes that hold none.

Values come from Faker (seeded), so nothing here is about a real person. Names are drawn half from
Faker's en_US person lists (the ones the masker's name list is built from: ``listed``) and half from
other locales and a hand-written list, keeping only names none of whose parts is in the en_US lists
(``unlisted``): the honest measure of a masker without an NER model. Phone numbers are Faker's,
kept only when ``phonenumbers`` calls them valid (Faker draws unassigned area codes; real numbers
have assigned ones).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

UNLISTED_LOCALES = ("pl_PL", "fi_FI", "vi_VN", "tr_TR", "hu_HU", "zu_ZA", "yo_NG", "ga_IE",
                    "id_ID", "sw")
UNUSUAL_NAMES = ("Oluwaseun Adebayo", "Siobhán Ní Bhriain", "Xochitl Quispe", "Thandiwe Mokoena",
                 "Aoife Breathnach", "Bolat Nurpeisov", "Ngozi Okonkwo-Eze", "Kalani Kahananui",
                 "Zbigniew Brzęczyszczykiewicz", "Ingrid Þórsdóttir", "Rangi Te Whare",
                 "Dagny Solberg", "Tenzin Dorjee", "Ilse van der Merwe", "Yerlan Abenov")
ODD_ADDRESSES = ("450 W 33rd Ave, Apt 5, New York, NY 10001", "PO Box 1120, Tulsa, OK 74101",
                 "221B Baker Street, London NW1 6XE", "Flat 3, 12 Mill Lane, Leeds LS6 2QR",
                 "1600 Amphitheatre Pkwy, Mountain View, CA 94043", "Hauptstraße 5, 10115 Berlin",
                 "Rua Augusta 1500, São Paulo", "12 rue de la Paix, 75002 Paris",
                 "Unit 4/17 Smith St, Fitzroy VIC 3065", "RR 2 Box 152, Hinton, WV 25951")
DATE_FORMATS = ("%m/%d/%Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y", "%b %d, %Y", "%d-%b-%Y",
                "%d.%m.%Y", "%m/%d/%y", "%B %Y", "%b %d")
TEMPLATES = (
    "{name} (DOB {dob}, {mrn}) was admitted on {date} with chest pain; seen by Dr. {clinician}.",
    "Discharge summary for {name}, {address}. Follow-up phone: {phone}. Next visit {date}.",
    "Patient {name} called from {phone} about the lab results of {date}; e-mail {email}.",
    "Referral: {name}, SSN {ssn}, lives at {address}. Contact {email}.",
    "{name} reports dizziness since {date}. Her son {name2} can be reached on {phone}.",
    "Seen with {titled} in clinic on {date}; {mrn}. Plan discussed with {name}.",
    "Portal login for {name} from IP {ip} on {date}; records at {url}.",
    "Customer {name} disputes a charge on card {card} dated {date}.",
    "Wire of $2,400 from {account} to IBAN {iban} requested by {name} ({email}).",
    "KYC check: {surname_first}, {passport}, {licence}, SSN {ssn}.",
    "{name} updated the mailing address to {address} and the phone number to {phone}.",
    "Suspicious login to online banking for {titled} from {ip} via {url} on {date}.",
)
NAME_WORD_SENTENCES = (  # each starts with a word that is also a name in Faker's en_US lists
    "Short of breath on exertion; no chest pain at rest.",
    "Small effusion noted on the chest X-ray, no consolidation.",
    "White cell count raised at 14.2, CRP 88.",
    "Little change overnight; pain score 4 out of 10.",
    "Green sputum for 3 days, afebrile this morning.",
    "Black stools reported once; haemoglobin stable at 118 g/L.",
    "Young adult with no past medical history.",
    "Long discussion about smoking cessation; ready to quit.",
    "Mark on the left forearm measured 6 mm, regular border.",
    "Frank blood in the catheter bag this morning, flushed.",
    "Case reviewed at the multidisciplinary meeting on Tuesday.",
    "Christian faith noted as important to the patient's care.",
    "Grant funding covers the first 3 sessions.",
    "Chase the missing statement with the back office.",
    "Price of the annual plan is 120 and renews automatically.",
    "King size bed requested for the hotel booking in the travel claim.",
    "Walker frame provided by occupational therapy.",
    "Banks holiday opening hours apply next week.",
    "Joy at the good news; mood much improved.",
    "Hunter syndrome was ruled out by the genetics team.",
    "Strong family history of diabetes on the maternal side.",
    "Day 3 after surgery, eating and drinking well.",
    "Page the registrar if the systolic pressure falls below 90.",
    "Cross-matched 2 units of blood for theatre.",
    "Summer camp form signed; no restrictions on activity.",
    "April appointment moved to the afternoon clinic.",
    "Rose from a chair without help, gait steady.",
    "Rich diet advised against; referred to the dietitian.",
    "Guy's and St Thomas' guidelines were followed for the infusion.",
    "Wells score 2, D-dimer negative, no scan needed.",
    "Branch 14 closes at 16:00 on weekdays.",
)
PLAIN_SENTENCES = (
    "The patient reported pain in the left knee after 2 weeks of running.",
    "BP 120/80, pulse 72, HbA1c 7.2% on the last check.",
    "Started metformin 500 mg twice daily with meals.",
    "Will review in clinic in 6 weeks with repeat bloods.",
    "Hope to step down to oral antibiotics tomorrow.",
    "Wound clean and dry, sutures out on day 10.",
    "Allergic to penicillin (rash); tolerates cephalosporins.",
    "Physiotherapy twice weekly; walking 400 m with a frame.",
    "Follow-up MRI in 3 months to assess the lesion size.",
    "Denies fever, night sweats or weight loss.",
    "Grade 2 ankle sprain, advised rest, ice and elevation.",
    "Insulin dose increased from 10 to 12 units at night.",
    "Room 12 on ward B, bed 4, moved for isolation.",
    "Temperature 37.9 C at 14:30, paracetamol 1 g given.",
    "Family aware and happy with the plan.",
    "The account was opened with a deposit of $1,250.00.",
    "Monthly fee waived for balances above 5,000 dollars.",
    "Interest rate fixed at 4.5% for 24 months.",
    "Customer asked to raise the daily limit to 2,000.",
    "Card blocked after 3 failed PIN attempts; new card ordered.",
    "Payment of 89.99 returned unpaid; a letter was sent.",
    "Overdraft of 300 agreed for 6 months, reviewed quarterly.",
    "Direct debit set up for the 15th of each month.",
    "Transfer limit for new payees is 10,000 per day.",
    "Mortgage term extended from 25 to 30 years.",
    "Savings goal reached; customer wants to open an ISA.",
    "Two cheques deposited, both cleared within 3 working days.",
    "Fraud team reviewed 7 transactions and refunded 2.",
    "Loan application approved subject to proof of income.",
)
PII_FREE = NAME_WORD_SENTENCES + PLAIN_SENTENCES


@dataclass(frozen=True)
class Span:
    """One planted piece of personal data: its entity type, the text written, and for names
    whether the masker's name list holds every part of it."""

    kind: str
    value: str
    listed: bool | None = None


@dataclass(frozen=True)
class Note:
    text: str
    spans: tuple[Span, ...]


class _Draw:
    """Seeded draws of every kind of value a template slot asks for."""

    def __init__(self, seed: int) -> None:
        from faker import Faker
        from faker.providers.person.en_US import Provider

        self.rng = random.Random(seed)
        self.us, self.gb = Faker("en_US"), Faker("en_GB")
        self.others = [Faker(locale) for locale in UNLISTED_LOCALES]
        for i, fake in enumerate([self.us, self.gb, *self.others]):
            fake.seed_instance(seed + i)
        self.listed_first = sorted(Provider.first_names)
        self.listed_last = sorted(Provider.last_names)
        self.listed = set(self.listed_first) | set(self.listed_last)

    def person(self) -> tuple[str, str, bool]:
        """(first, last, listed): half from the en_US lists, half from elsewhere."""
        if self.rng.random() < 0.5:
            return self.rng.choice(self.listed_first), self.rng.choice(self.listed_last), True
        while True:
            if self.rng.random() < 0.3:
                first, last = self.rng.choice(UNUSUAL_NAMES).split(" ", 1)
            else:
                fake = self.rng.choice(self.others)
                first, last = fake.first_name(), fake.last_name()
            if not set(f"{first} {last}".split()) & self.listed:
                return first, last, False

    def date(self) -> str:
        return self.us.date_between("-90y", "+1y").strftime(self.rng.choice(DATE_FORMATS))

    def phone(self) -> str:
        import phonenumbers

        fake, region = self.rng.choice([(self.us, "US"), (self.us, "US"), (self.gb, "GB")])
        while True:
            number = fake.phone_number()
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(number, region)):
                    return number
            except phonenumbers.NumberParseException:
                continue

    def address(self) -> str:
        """One line: 60 % Faker en_US, 25 % en_GB, 15 % hand-written (other layouts)."""
        draw = self.rng.random()
        if draw < 0.15:
            return self.rng.choice(ODD_ADDRESSES)
        if draw < 0.4:
            street = self.gb.street_address().replace("\n", ", ")
            return f"{street}, {self.gb.city()} {self.gb.postcode()}"
        return (f"{self.us.street_address()}, {self.us.city()}, {self.us.state_abbr()} "
                f"{self.us.zipcode()}")

    def digits(self, low: int, high: int) -> str:
        return "".join(self.rng.choices(string.digits, k=self.rng.randint(low, high)))

    def grouped(self, value: str, sep: str) -> str:
        """In fours, as cards and IBANs are printed (15-digit cards as 4-6-5)."""
        cuts = (0, 4, 10, 15) if len(value) == 15 else range(0, len(value) + 4, 4)
        return sep.join(value[a:b] for a, b in zip(cuts, cuts[1:]) if value[a:b])


def _slots(draw: _Draw) -> dict[str, Callable[[], tuple[str, list[Span]]]]:
    """Each slot's writer: (text to write, its gold spans)."""
    rng = draw.rng

    def name() -> tuple[str, list[Span]]:
        first, last, listed = draw.person()
        return f"{first} {last}", [Span("PERSON", f"{first} {last}", listed)]

    def titled() -> tuple[str, list[Span]]:
        _, last, listed = draw.person()
        return f"{rng.choice(['Mr.', 'Mrs.', 'Ms.', 'Mr', 'Ms'])} {last}", [
            Span("PERSON", last, listed)]

    def surname_first() -> tuple[str, list[Span]]:
        first, last, listed = draw.person()
        return f"{last}, {first}", [Span("PERSON", f"{last}, {first}", listed)]

    def labelled(kind: str, labels: list[str], value: str) -> tuple[str, list[Span]]:
        return f"{rng.choice(labels)} {value}", [Span(kind, value)]

    def plain(kind: str, value: str) -> tuple[str, list[Span]]:
        return value, [Span(kind, value)]

    def card() -> tuple[str, list[Span]]:
        number = draw.us.credit_card_number()
        if len(number) in (15, 16):
            number = rng.choice([number, draw.grouped(number, " "), draw.grouped(number, "-")])
        return plain("CREDIT_CARD", number)

    def iban() -> tuple[str, list[Span]]:
        value = rng.choice([draw.us, draw.gb, *draw.others[:3]]).iban()
        return plain("IBAN_CODE", rng.choice([value, draw.grouped(value, " ")]))

    def licence() -> tuple[str, list[Span]]:
        value = rng.choice([rng.choice(string.ascii_uppercase) + draw.digits(7, 7),
                            "".join(rng.choices(string.ascii_uppercase, k=2)) + draw.digits(6, 6),
                            draw.digits(9, 9)])
        return labelled("US_DRIVER_LICENSE", ["driver's license", "driver license no.",
                                              "driving licence", "DL#"], value)

    return {
        "name": name, "name2": name, "clinician": name, "titled": titled,
        "surname_first": surname_first,
        "dob": lambda: plain("DATE_TIME", draw.date()),
        "date": lambda: plain("DATE_TIME", draw.date()),
        "mrn": lambda: labelled("MEDICAL_RECORD_NUMBER", ["MRN", "MRN:", "MR#",
                                                          "medical record number",
                                                          "hospital number"], draw.digits(6, 9)),
        "phone": lambda: plain("PHONE_NUMBER", draw.phone()),
        "email": lambda: plain("EMAIL_ADDRESS", rng.choice([draw.us, *draw.others]).email()),
        "address": lambda: plain("STREET_ADDRESS", draw.address()),
        "ssn": lambda: plain("US_SSN", draw.us.ssn()),
        "card": card, "iban": iban, "licence": licence,
        "account": lambda: labelled("US_BANK_NUMBER", ["account", "acct no.",
                                                       "checking account"], draw.digits(8, 12)),
        "passport": lambda: labelled("US_PASSPORT", ["passport", "passport no.",
                                                     "passport number"],
                                     draw.us.passport_number()),
        "url": lambda: plain("URL", rng.choice([draw.us.url(), draw.us.uri()])),
        "ip": lambda: plain("IP_ADDRESS", draw.us.ipv4() if rng.random() < 0.8
                            else draw.us.ipv6()),
    }


def notes(count: int, seed: int = 0) -> list[Note]:
    """``count`` notes, each a template with every slot filled, cycling through the templates."""
    draw = _Draw(seed)
    slots = _slots(draw)
    formatter = string.Formatter()
    made = []
    for i in range(count):
        template = TEMPLATES[i % len(TEMPLATES)]
        values: dict[str, str] = {}
        spans: list[Span] = []
        for _, field, _, _ in formatter.parse(template):
            if field and field not in values:
                values[field], gold = slots[field]()
                spans.extend(gold)
        made.append(Note(template.format(**values), tuple(spans)))
    return made

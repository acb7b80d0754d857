"""Shared fixtures: offline environment, a tiny random BERT, small data files."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's packages, never a same-named module elsewhere

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# σ calibrations (common.privacy.sigma_cache) kept for every test process and the Flower processes
# they start, outside the user's own cache; a kept σ is re-checked with Opacus before any use
os.environ.setdefault("CONSORTIUM_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"consortium-test-cache-{os.getuid()}"))


def make_tiny_bert(directory: Path) -> Path:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary of the synthetic data."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from common.data import synthetic

    words = set()
    for pool in (synthetic._SUBJECTS, synthetic._VERBS, synthetic._FILLER,
                 *synthetic._TOPIC_WORDS.values()):
        for phrase in pool:
            words.update(phrase.split())
    words.update(["and", "good", "bad", "great", "awful", "movie", "food", "fine"])
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # positional: transformers 4 calls it vocab_file, 5 calls it vocab and ignores vocab_file=
    # (which left a 5-token vocabulary: every word [UNK], nothing to learn)
    tokenizer = BertTokenizerFast(str(directory / "vocab.txt"))
    assert len(tokenizer) == len(vocab), "the tiny tokenizer lost its vocabulary"
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).bert.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def make_ner_bert(directory: Path) -> Path:
    """A 2-layer random BERT whose vocabulary covers the NER demo, plus pieces that split
    'johnson' into 'john ##son'."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    from common.tasks import synthetic_ner

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
             *sorted(synthetic_ner.vocabulary() | {"john", "##son", "visited"})]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    BertForTokenClassification(config).bert.save_pretrained(directory)
    BertTokenizerFast(vocab=str(directory / "vocab.txt")).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def ner_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_ner_bert(tmp_path_factory.mktemp("ner-bert")))


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    """A 40-row, two-domain sentiment CSV."""
    rows = ["text,label,domain"]
    for i in range(40):
        positive = i % 2 == 0
        word = "great good fine" if positive else "awful bad"
        domain = "movie" if i < 20 else "food"
        rows.append(f"the {domain} was {word} {i % 5},{'pos' if positive else 'neg'},{domain}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _worker_local_superlink_ports() -> None:
    """Each pytest-xdist worker gets its own ports for Flower's local SuperLink (Flower's own
    variables, read by `flwr run` and `consortium simulate`), so simulations on different
    workers can overlap. CONSORTIUM_TEST_PORT_BASE (default 39091) moves the whole block, so
    two suites on one machine (two checkouts) do not share a SuperLink."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    base = int(os.environ.get("CONSORTIUM_TEST_PORT_BASE", "39091"))
    if worker.startswith("gw") and worker[2:].isdigit():
        offset = 100 * (int(worker[2:]) + 1)
        os.environ.setdefault("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(base + offset))
        os.environ.setdefault("FLWR_LOCAL_CONTROL_API_PORT", str(base + 2 + offset))


_worker_local_superlink_ports()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Flower processes (marked slow) run one after another per module, on one
    pytest-xdist worker (they share module fixtures: a finished run, a federation), unless a test
    names its own group (a test with a federation of its own). Modules' groups overlap on
    different workers: each worker has its own local SuperLink ports, and the deployment tests'
    TLS SuperLinks take free ports. The rest spread over the workers."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"flower-{item.path.stem}"))
    # the long ones first (stable: a module's tests stay in order), so that the short ones fill
    # the workers at the end instead of one worker finishing a long run alone
    items.sort(key=lambda item: not item.get_closest_marker("slow"))


@pytest.fixture(autouse=True)
def _our_loggers_propagate() -> None:
    """configure_logging() (run by the apps that some tests drive in-process) stops our
    loggers propagating; caplog listens at the root, so every test starts with it restored."""
    from common.infra.logs import PACKAGES

    for name in PACKAGES:
        logging.getLogger(name).propagate = True
        logging.getLogger(name).handlers = []

"""Issue 33 item 15: a monitoring request honours the partner's ``allowed-base-models``, and a
partner's processes are offline by default: the base model a run names is loaded from the
partner's own disk unless its policy allows the hub (``allow-hub``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import common.model.factory
from client.monitor_request import answer_monitoring
from client.policy import PartnerSettings
from client.received import prepare
from common.config import RunConfig
from common.errors import PrivacyError
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.data.synthetic import LABELS
from simulations.cli import main


def _config(tiny_bert: str, tmp_path: Path) -> RunConfig:
    return RunConfig(base_model=tiny_bert, examples_per_partner=40, max_length=16,
                     out_dir=str(tmp_path / "out"))


def test_monitoring_refuses_a_base_model_outside_the_partners_list(tiny_bert: str,
                                                                   tmp_path: Path) -> None:
    config = _config(tiny_bert, tmp_path)
    partner = PartnerSettings.from_node_config({
        "ledger-dir": str(tmp_path / "ledgers"), "monitoring": "counts",
        "allowed-base-models": "org/approved-model"})
    model = build_model(config, LABELS)
    with pytest.raises(PrivacyError, match="not in partner-0's allowed list"):
        answer_monitoring(config, partner, trainable_state(model), frozen_fingerprint(model),
                          "release-1", "run-1")
    assert not list((tmp_path / "ledgers").glob("*@*.json"))  # nothing answered or recorded


def test_a_partner_loads_the_base_model_from_its_own_disk_unless_it_allows_the_hub(
        tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    def spy(real: Any) -> type:
        class Spy:
            @staticmethod
            def from_pretrained(path: str, **kwargs: Any) -> Any:
                asked.append(kwargs.get("local_files_only", False))
                return real.from_pretrained(path, **kwargs)
        return Spy

    # the module common.model.factory resolves auto classes in
    library = common.model.factory.transformers
    monkeypatch.setattr(common.model.factory, "AutoTokenizer", spy(library.AutoTokenizer))
    monkeypatch.setattr(common.model.factory, "AutoModel", spy(library.AutoModel))  # pooled-head
    monkeypatch.setattr(library, "AutoModelForSequenceClassification",  # head, lora, full
                        spy(library.AutoModelForSequenceClassification))
    for finetune in ("pooled-head", "head"):
        config = _config(tiny_bert, tmp_path).replace(finetune=finetune)
        asked.clear()
        model = build_model(config, LABELS)  # the coordinator's own build: may use the hub
        assert asked == [False], finetune
        shared, fingerprint = trainable_state(model), frozen_fingerprint(model)
        for policy, offline in (({}, True), ({"allow-hub": True}, False)):
            asked.clear()
            partner = PartnerSettings.from_node_config({"ledger-dir": str(tmp_path / "ledgers"),
                                                        **policy})
            prepare(config, partner, shared, fingerprint, torch.device("cpu"))
            assert asked == [offline, offline]  # tokenizer and model


def test_partner_start_runs_its_processes_offline(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import client.cli

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    started: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(client.cli, "run_tagged",
                        lambda command, env, *args, **kwargs: started.append((command, env)) or 0)
    data = tmp_path / "mine.csv"
    data.write_text("text,label\nfine,pos\nbad,neg\n")
    start = ["partner", "start", "--coordinator", "127.0.0.1:9092", "--data", str(data),
             "--max-epsilon", "1", "--insecure", "--name", "org-a",
             "--ledger-dir", str(tmp_path / "ledgers")]
    assert main(start) == 0 and main(start + ["--allow-hub"]) == 0
    (offline, env), (online, hub_env) = started
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in hub_env
    assert "allow-hub" not in " ".join(offline) and 'allow-hub=true' in " ".join(online)

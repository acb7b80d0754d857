"""common.infra.storage (atomic, sealed JSON) and server.checkpoint (round checkpoints, resume)."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest

from common.errors import CheckpointError, ConfigError
from common.infra.storage import atomic_write_bytes, read_sealed_json, write_sealed_json
from server import checkpoint as ckpt_mod
from server.checkpoint import (Checkpoint, check_same_config, config_diff, latest_checkpoint,
                               save_checkpoint)

BODY = {"round": 3, "names": ["a", "b"], "nested": {"eps": 1.25, "ok": True}}


def test_sealed_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "s.json"  # parent directories are created
    write_sealed_json(path, BODY)
    assert read_sealed_json(path) == BODY
    assert set(json.loads(path.read_text())) == {"body", "sha256"}


def test_sealed_json_mode(tmp_path):
    write_sealed_json(tmp_path / "a.json", BODY, mode=0o600)
    write_sealed_json(tmp_path / "b.json", BODY)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o644


@pytest.mark.parametrize("keep", [0, 1, 10, -2])
def test_truncated_sealed_json_is_an_error(tmp_path, keep):
    path = tmp_path / "s.json"
    write_sealed_json(path, BODY)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match="unreadable or truncated") as info:
        read_sealed_json(path)
    assert str(path) in str(info.value)


def test_edited_sealed_json_is_an_error(tmp_path):
    path = tmp_path / "s.json"
    write_sealed_json(path, BODY)
    sealed = json.loads(path.read_text())
    sealed["body"]["nested"]["eps"] = 0.5  # the hash is left as it was
    path.write_text(json.dumps(sealed))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_sealed_json(path)


@pytest.mark.parametrize("content", ['{"body": {}}', "[1, 2]", "null", '{"sha256": "x"}'])
def test_sealed_json_of_the_wrong_shape_is_an_error(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(CheckpointError):
        read_sealed_json(path)


def test_missing_sealed_json_is_an_error(tmp_path):
    with pytest.raises(CheckpointError):
        read_sealed_json(tmp_path / "absent.json")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_atomic_write_keeps_the_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def _ckpt(round_, value):
    return Checkpoint(round_, {"w": np.full((2, 3), value, np.float32),
                               "b": np.arange(3, dtype=np.int64)},
                      {"config": {"num-rounds": 5}, "round": round_})


def test_checkpoint_round_trip(tmp_path):
    save_checkpoint(tmp_path, _ckpt(1, 0.5))
    loaded = latest_checkpoint(tmp_path)
    assert loaded.round == 1
    assert loaded.state == {"config": {"num-rounds": 5}, "round": 1}
    np.testing.assert_array_equal(loaded.arrays["w"], np.full((2, 3), 0.5, np.float32))
    assert loaded.arrays["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded.arrays["b"], [0, 1, 2])


def test_no_checkpoint_gives_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "absent") is None


def test_latest_is_the_highest_round(tmp_path):
    save_checkpoint(tmp_path, _ckpt(9, 9.0))
    save_checkpoint(tmp_path, _ckpt(10, 10.0))  # "round-00010" sorts after "round-00009"
    assert latest_checkpoint(tmp_path).round == 10


def test_truncated_newest_weights_fall_back_to_the_older(tmp_path, caplog):
    save_checkpoint(tmp_path, _ckpt(1, 1.0))
    save_checkpoint(tmp_path, _ckpt(2, 2.0))
    newest = tmp_path / "round-00002.npz"
    newest.write_bytes(newest.read_bytes()[:40])
    with caplog.at_level(logging.ERROR, logger=ckpt_mod.__name__):
        loaded = latest_checkpoint(tmp_path)
    assert loaded.round == 1
    np.testing.assert_array_equal(loaded.arrays["w"], np.full((2, 3), 1.0, np.float32))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "round-00002.json" in errors[0].getMessage()


def test_damaged_newest_manifest_falls_back_to_the_older(tmp_path, caplog):
    save_checkpoint(tmp_path, _ckpt(1, 1.0))
    save_checkpoint(tmp_path, _ckpt(2, 2.0))
    (tmp_path / "round-00002.json").write_text("{")
    with caplog.at_level(logging.ERROR, logger=ckpt_mod.__name__):
        assert latest_checkpoint(tmp_path).round == 1
    assert any("round-00002" in r.getMessage() for r in caplog.records)


def test_all_damaged_gives_none(tmp_path, caplog):
    save_checkpoint(tmp_path, _ckpt(1, 1.0))
    (tmp_path / "round-00001.npz").unlink()
    with caplog.at_level(logging.ERROR, logger=ckpt_mod.__name__):
        assert latest_checkpoint(tmp_path) is None
    assert caplog.records


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for r in range(1, 5):
        save_checkpoint(tmp_path, _ckpt(r, float(r)))
    kept = range(5 - ckpt_mod.KEEP, 5)
    expected = {f"round-{r:05d}{ext}" for r in kept for ext in (".json", ".npz")}
    assert {p.name for p in tmp_path.iterdir()} == expected
    assert ckpt_mod.KEEP == 2 and expected == {"round-00003.json", "round-00003.npz",
                                               "round-00004.json", "round-00004.npz"}


def test_same_config_passes_and_resume_is_ignored():
    check_same_config({"seed": 1, "resume": False}, {"seed": 1, "resume": True})


def test_changed_config_lists_key_old_and_new():
    saved = {"seed": 42, "num-rounds": 3, "epsilon": 8.0, "resume": False}
    current = {"seed": 42, "num-rounds": 5, "epsilon": 4.0, "resume": True}
    with pytest.raises(ConfigError) as info:
        check_same_config(saved, current)
    message = str(info.value)
    assert "num-rounds: 3 -> 5" in message
    assert "epsilon: 8.0 -> 4.0" in message
    assert "seed:" not in message and "resume:" not in message


def test_config_diff_names_added_and_removed_keys():
    assert config_diff({"a": 1, "b": "x"}, {"b": "y", "c": True}) == [
        "a: 1 -> None", "b: 'x' -> 'y'", "c: None -> True"]

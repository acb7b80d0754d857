"""Update compression: hand-checked error bounds, byte counts, rejection of malformed wire arrays,
and a tiny-BERT partner round whose int8 update decodes within bound of the uncompressed one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.data import PartnerSettings
from client.partner import train_round
from common.wire.records import from_array_record, to_array_record
from common import protocol as P
from common.wire.compression import (SCALE_SUFFIX, decode_update, encode_update, from_wire, to_wire,
                                wire_bytes)
from common.config import RunConfig
from common.errors import ConfigError, UpdateError
from common.wire.updates import update_norm
from server.aggregation import RoundFold
from tests.test_partner_round import shared_start, tiny_config

SHAPES = {"a": (8, 384), "b": (384, 8), "head.bias": (4,)}


def _update(seed: int = 0, scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}


def test_fp16_by_hand() -> None:
    # 1/3 in float16 is 1365/4096 = 0.333251953125: relative error 2.44e-4 <= 2^-11
    wire = encode_update({"x": np.array([1 / 3, 0.5, -2.0], np.float32)}, "fp16")
    assert wire["x"].dtype == np.float16
    back = decode_update(wire, "fp16", {"x": (3,)})["x"]
    assert back[0] == pytest.approx(1365 / 4096, abs=0)
    assert back[1:].tolist() == [0.5, -2.0]  # exact in float16


def test_fp16_relative_error_bound() -> None:
    update = _update(1)
    back = decode_update(encode_update(update, "fp16"), "fp16", SHAPES)
    for k, x in update.items():
        normal = np.abs(x) >= 2.0 ** -14
        rel = np.abs(back[k][normal] - x[normal]) / np.abs(x[normal])
        assert rel.max() <= 2.0 ** -11
        assert np.abs(back[k][~normal] - x[~normal]).max(initial=0) <= 2.0 ** -25


def test_int8_by_hand() -> None:
    # scale = 1/127; q = [127, -64 (tie -63.5 rounds to even), 32 (32.258), 0]
    wire = encode_update({"x": np.array([1.0, -0.5, 0.254, 0.0], np.float32)}, "int8")
    assert wire["x"].tolist() == [127, -64, 32, 0] and wire["x"].dtype == np.int8
    assert wire["x" + SCALE_SUFFIX].tolist() == [pytest.approx(1 / 127)]
    back = decode_update(wire, "int8", {"x": (4,)})["x"]
    assert back.tolist() == pytest.approx([1.0, -64 / 127, 32 / 127, 0.0], rel=1e-6)


def test_int8_error_at_most_half_a_step_per_element() -> None:
    update = _update(2)
    wire = encode_update(update, "int8")
    back = decode_update(wire, "int8", SHAPES)
    for k, x in update.items():
        scale = float(wire[k + SCALE_SUFFIX][0])
        assert scale == pytest.approx(np.abs(x).max() / 127)
        assert np.abs(back[k] - x).max() <= scale / 2 * (1 + 1e-5)


def test_all_zero_tensor_encodes_to_zero_scale() -> None:
    wire = encode_update({"z": np.zeros(3, np.float32)}, "int8")
    assert wire["z#int8-scale"].tolist() == [0.0]
    assert decode_update(wire, "int8", {"z": (3,)})["z"].tolist() == [0.0, 0.0, 0.0]


def test_byte_counts() -> None:
    n = 8 * 384 * 2 + 4  # 6148 parameters in 3 tensors
    update = _update()
    assert wire_bytes(encode_update(update, "none")) == 4 * n
    assert wire_bytes(encode_update(update, "fp16")) == 2 * n
    assert wire_bytes(encode_update(update, "int8")) == n + 3 * 4  # + one fp32 scale per tensor


@pytest.mark.parametrize("break_it, match", [
    (lambda w: w.pop("a#int8-scale"), "missing"),
    (lambda w: w.update({"extra": np.zeros(1, np.int8)}), "unexpected"),
    (lambda w: w.update({"a": np.zeros((384, 8), np.int8)}), "int8\\[384, 8\\]"),
    (lambda w: w.update({"a": np.zeros((8, 384), np.float32)}), "float32"),
    (lambda w: w.update({"a#int8-scale": np.array([np.nan], np.float32)}), "finite"),
    (lambda w: w.update({"a#int8-scale": np.array([-1.0], np.float32)}), "finite number ≥ 0"),
    (lambda w: w.update({"a#int8-scale": np.array([1.0, 1.0], np.float32)}), "float32\\[1\\]"),
])
def test_malformed_int8_wire_is_an_update_error(break_it, match: str) -> None:
    wire = encode_update(_update(), "int8")
    break_it(wire)
    with pytest.raises(UpdateError, match=match):
        decode_update(wire, "int8", SHAPES)


def test_round_fold_decodes_then_validates() -> None:
    current = _update(3, scale=1.0)
    new = {k: v + d for (k, v), d in zip(current.items(), _update(4).values())}
    good = to_wire(current, new, "int8", bound=10.0)
    nan = to_wire(current, new, "fp16")
    nan["b"][0, 0] = np.float16(np.nan)  # fp16 decodes NaN faithfully: validation must catch it
    bad_shape = dict(good, **{"head.bias": np.zeros(5, np.int8)})
    fold = RoundFold(current, clip_norm=10.0, compression="int8")
    assert fold.offer("good", good, {P.NUM_EXAMPLES: 10.0})
    assert not fold.offer("bad-shape", bad_shape, {P.NUM_EXAMPLES: 10.0})
    fp16_fold = RoundFold(current, clip_norm=10.0, compression="fp16")
    assert not fp16_fold.offer("nan", nan, {P.NUM_EXAMPLES: 10.0})
    assert "NaN" in fp16_fold.failures[0]["reason"]
    assert "head.bias" in fold.failures[0]["reason"]
    result = fold.result()
    for k in current:
        step = float(good[k + SCALE_SUFFIX][0])
        assert np.abs(result[k] - new[k]).max() <= step / 2 + 1e-6


def test_decoded_update_stays_within_the_clip_bound() -> None:
    current = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    update = _update(5, scale=1.0)
    norm = update_norm(current, update)
    exactly_at_bound = {k: v * np.float32(2.0 / norm) for k, v in update.items()}
    for method in ("fp16", "int8"):
        wire = to_wire(current, exactly_at_bound, method, bound=2.0)
        decoded = from_wire(wire, current, method)
        assert update_norm(current, decoded) <= 2.0
        assert RoundFold(current, 2.0, compression=method).offer("p", wire,
                                                                 {P.NUM_EXAMPLES: 1.0})


def test_compression_is_validated_in_the_config() -> None:
    with pytest.raises(ConfigError, match="compression.*'zip'.*'none', 'fp16', 'int8'"):
        RunConfig.from_mapping({"compression": "zip"})


def test_tiny_bert_int8_round_decodes_within_bound(tiny_bert: str, tmp_path: Path) -> None:
    plain_cfg = tiny_config(tiny_bert, tmp_path, ledger_dir=str(tmp_path / "l1"))
    int8_cfg = plain_cfg.replace(compression="int8", ledger_dir=str(tmp_path / "l2"))
    shared, fingerprint = shared_start(plain_cfg)
    plain = train_round(plain_cfg, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    int8 = train_round(int8_cfg, PartnerSettings(name="p0"), shared, fingerprint, 1, "r")
    assert plain.metrics[P.UPDATE_CLIPPED] == 0.0  # no shrink: the bound below is exact
    assert plain.metrics[P.TRAIN_SECONDS] > 0
    wire = from_array_record(to_array_record(int8.arrays))  # through Flower's record
    assert wire_bytes(wire) < wire_bytes(plain.arrays) / 3.9
    fold = RoundFold(shared, int8_cfg.update_clip_norm, compression="int8")
    assert fold.offer("p0", wire, int8.metrics)
    decoded = fold.result()
    moved = 0
    for k in shared:
        step = float(wire[k + SCALE_SUFFIX][0])
        assert np.abs(decoded[k] - plain.arrays[k]).max() <= step / 2 + 1e-6
        moved += int(step > 0)
    assert moved >= 2  # the round did train something

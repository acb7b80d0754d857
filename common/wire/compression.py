"""Update compression on the wire: pure numpy, no flwr.

What travels is the partner's *update* ``new − old`` (already clipped), never the new weights:
an update is small and centred on zero, so a per-tensor scale spends the 8 or 16 bits on the
change itself, while the weights' magnitude would swamp a half-precision or 8-bit code.

- ``none``: the new weights in float32, as before (no decoding error).
- ``fp16``: the update cast to float16; relative error per element ≤ 2⁻¹¹ (round to nearest)
  for |x| ≥ 2⁻¹⁴, absolute error ≤ 2⁻²⁵ below that (subnormals); values above 65504 are refused.
- ``int8``: symmetric, per tensor: ``scale = max|x| / 127`` (float32, sent as the extra entry
  ``NAME#int8-scale`` of shape (1,)), ``q = round(x / scale)`` to nearest, so the error per
  element is ≤ scale / 2. Round-to-nearest, not stochastic rounding: it halves the worst-case
  error, needs no randomness, and its bias is negligible next to the DP noise already in the update
  (the updates of different partners round different values). Compression is post-processing of
  a DP release, so it changes no privacy number.

The partner encodes with :func:`to_wire`; the coordinator decodes with :func:`from_wire` *before*
validating and aggregating, and every malformed entry (missing / extra key, wrong dtype or shape,
bad scale) is an :class:`UpdateError` naming it.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from common.config import COMPRESSIONS
from common.errors import ConfigError, UpdateError
from common.wire.updates import update_norm

SCALE_SUFFIX = "#int8-scale"
_FP16_MAX = float(np.finfo(np.float16).max)


def _check_method(method: str) -> None:
    if method not in COMPRESSIONS:
        raise ConfigError(f"compression {method!r} is not valid; pick one of {list(COMPRESSIONS)}")


def int8_scale(x: np.ndarray) -> np.float32:
    """The symmetric per-tensor scale: max |x| / 127 (0 for an all-zero tensor)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return np.float32(peak / 127.0)


def encode_update(update: Mapping[str, np.ndarray], method: str) -> dict[str, np.ndarray]:
    """Wire arrays for a dict of float update arrays (``none`` returns float32 copies)."""
    _check_method(method)
    wire: dict[str, np.ndarray] = {}
    for name, value in update.items():
        x = np.asarray(value, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise UpdateError(f"update {name!r} holds NaN or Inf; refusing to encode it")
        if method == "none":
            wire[name] = x.copy()
        elif method == "fp16":
            if x.size and float(np.max(np.abs(x))) > _FP16_MAX:
                raise UpdateError(f"update {name!r} exceeds the float16 range ±{_FP16_MAX:g}; "
                                  "use compression int8 or none")
            wire[name] = x.astype(np.float16)
        else:
            scale = int8_scale(x)
            q = np.rint(x / scale) if scale > 0 else np.zeros_like(x)
            wire[name] = np.clip(q, -127, 127).astype(np.int8)
            wire[name + SCALE_SUFFIX] = np.array([scale], dtype=np.float32)
    return wire


def decode_update(wire: Mapping[str, np.ndarray], method: str,
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Float32 update arrays from wire arrays, checked entry by entry against ``shapes``."""
    _check_method(method)
    expected = set(shapes) | ({n + SCALE_SUFFIX for n in shapes} if method == "int8" else set())
    missing, extra = sorted(expected - set(wire)), sorted(set(wire) - expected)
    if missing or extra:
        raise UpdateError(f"{method} update entries differ from the model's: missing "
                          f"{missing[:3]}, unexpected {extra[:3]}; do both sides use the same "
                          "compression, base model and finetune mode?")
    wire_dtype = {"none": np.float32, "fp16": np.float16, "int8": np.int8}[method]
    decoded: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        got = np.asarray(wire[name])
        if got.dtype != wire_dtype or tuple(got.shape) != tuple(shape):
            raise UpdateError(f"{method} update {name!r}: got {got.dtype}{list(got.shape)}, "
                              f"expected {np.dtype(wire_dtype)}{list(shape)}")
        if method != "int8":
            decoded[name] = got.astype(np.float32)
            continue
        scale = np.asarray(wire[name + SCALE_SUFFIX])
        if scale.dtype != np.float32 or scale.shape != (1,):
            raise UpdateError(f"scale of {name!r}: got {scale.dtype}{list(scale.shape)}, "
                              "expected float32[1]")
        if not (math.isfinite(float(scale[0])) and float(scale[0]) >= 0):
            raise UpdateError(f"scale of {name!r} is {float(scale[0])!r}; it must be a finite "
                              "number ≥ 0")
        decoded[name] = got.astype(np.float32) * scale[0]
    return decoded


def to_wire(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], method: str,
            bound: float = 0.0) -> dict[str, np.ndarray]:
    """What a partner sends: the new weights (``none``) or the encoded update ``new − old``.

    With ``bound`` > 0 the *decoded* update is kept within the L2 bound the coordinator checks:
    rounding can lengthen a clipped update slightly, so it is shrunk until it fits.
    """
    _check_method(method)
    if method == "none":
        return {k: np.asarray(new[k]).copy() for k in old}
    update = {k: np.asarray(new[k], np.float32) - np.asarray(old[k], np.float32) for k in old}
    shapes = {k: tuple(v.shape) for k, v in update.items()}
    for _ in range(8):
        wire = encode_update(update, method)
        zeros = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        norm = update_norm(zeros, decode_update(wire, method, shapes))
        if bound <= 0 or norm <= bound:
            return wire
        shrink = bound / norm * (1 - 1e-3)
        update = {k: v * np.float32(shrink) for k, v in update.items()}
    raise UpdateError(f"could not fit the {method} update within update-clip-norm {bound:g}")


def from_wire(wire: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray],
              method: str) -> dict[str, np.ndarray]:
    """The partner's new weights, at the coordinator: ``current + decode(wire)`` (or the wire
    arrays themselves with ``none``, checked later by the coordinator's validation)."""
    _check_method(method)
    if method == "none":
        return dict(wire)
    shapes = {k: tuple(np.shape(v)) for k, v in current.items()}
    delta = decode_update(wire, method, shapes)
    return {k: (np.asarray(current[k], np.float32) + delta[k]).astype(np.asarray(current[k]).dtype)
            for k in current}


def wire_bytes(wire: Mapping[str, np.ndarray]) -> int:
    """Payload bytes of the wire arrays (the array data, without record framing)."""
    return int(sum(np.asarray(a).nbytes for a in wire.values()))

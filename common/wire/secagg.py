"""The secure-aggregation maths both sides compute: the mask a seed expands to, and the seed two
partners share. Masks are expanded with ChaCha20 keyed by HKDF(seed) (``cryptography``), not
Flower's ``pseudo_rand_gen``, which folds the 256-bit seed into a 32-bit NumPy seed (a coordinator
could search 2^32 seeds for a pairwise mask)."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key


def mask_vector(seed: bytes, length: int, mod_range: int) -> np.ndarray:
    """``length`` uniform integers in [0, mod_range) from a secret seed: ChaCha20 keystream under
    an HKDF-SHA256 key of the seed (mod_range a power of two ≤ 2^32, so the cut is exact)."""
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"consortium secagg mask").derive(seed)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(4 * length)), dtype="<u4").astype(np.int64)
    return words & (mod_range - 1)


def pairwise_seed(own_sk1: bytes, peer_pk1: bytes) -> bytes:
    """The seed two partners share (ECDH + HKDF); the coordinator can rebuild it only from t
    shares of one side's sk1, which partners give only for a dropout."""
    return generate_shared_key(bytes_to_private_key(own_sk1), bytes_to_public_key(peer_pk1))

"""Which split (train, val, test) a labelled galaxy is in, and its place in a shard's order: fixed by a hash of
(seed, id) alone, so adding, removing or reordering catalog rows never moves another galaxy."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def hash_fraction(id_str: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, id) alone: the basis of every split and shard order."""
    digest = hashlib.sha256(f"{seed}:{id_str}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(ids: pd.Series, seed: int, train_fraction: float, val_fraction: float) -> pd.Series:
    """'train' / 'val' / 'test' per id, by hash: adding or reordering rows never moves another galaxy."""
    if not 0 < train_fraction < 1 or val_fraction < 0 or train_fraction + val_fraction > 1:
        raise ValueError(f"Split fractions must satisfy 0 < train < 1 and train + val <= 1; got train={train_fraction}, val={val_fraction}")
    u = ids.map(lambda i: hash_fraction(i, seed))
    return pd.Series(np.where(u < train_fraction, "train", np.where(u < train_fraction + val_fraction, "val", "test")), index=ids.index)

"""Shared writing helpers: JSON that strict readers accept."""

import json
import math

import numpy as np

from zoobot_core.io import write_json


def test_json_has_null_for_nan_and_plain_numbers_for_numpy_scalars(tmp_path):
    write_json({"auc": float("nan"), "folds": [np.float32(0.5), np.int64(3), math.inf], "nested": {"r2": np.float64("nan")}}, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "folds": [0.5, 3, None], "nested": {"r2": None}}


def test_atomic_dir_removes_what_a_killed_earlier_writer_left(tmp_path):
    """SIGKILL gives atomic_dir no chance to clean up: the next write of the same output removes the leftovers."""
    from zoobot_core.io import atomic_dir

    target = tmp_path / "chunk_1"
    for stale in (tmp_path / ".chunk_1.abc123.tmp", tmp_path / ".chunk_1.zz9.tmp"):
        stale.mkdir()
        (stale / "half.png").write_bytes(b"x")
    other = tmp_path / ".chunk_10.abc.tmp"  # another output's temporary: not ours to remove
    other.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "done.png").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".chunk_10.abc.tmp", "chunk_1"]
    assert (target / "done.png").read_bytes() == b"y"

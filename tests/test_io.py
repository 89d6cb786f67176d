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

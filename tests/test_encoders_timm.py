"""Full-size agreement with timm: each architecture timm builds (random weights, every norm parameter and
statistic randomised) against the Keras port, on the same weights and 224 px images.

Needs an environment with torch and timm: `make timm-env` makes .venv-timm (or set ZOOBOT_TIMM_PYTHON to a
Python that has them). Elsewhere these tests skip, saying so; the fixtures in test_encoders.py (made by timm,
checked everywhere) cover the same code at tiny sizes. Figures: docs/encoders.md.
"""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

from zoobot_core import encoders

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
import bench_encoders  # noqa: E402

ARCHITECTURES = ["convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "efficientnet_b0", "resnet18", "resnet50"]


@pytest.fixture(scope="module")
def reference_python():
    python = bench_encoders.timm_python()
    if python is None:
        pytest.skip("torch and timm are not installed: `make timm-env` (about 4 min, 5.5 GB) or ZOOBOT_TIMM_PYTHON runs the full-size comparison")
    return python


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_size_features_equal_timms(reference_python, arch, tmp_path):
    result = bench_encoders.agreement(reference_python, arch, tmp_path / arch)
    assert result["features_shape_ok"]
    assert result["max_error_relative_to_largest_feature"] < 1e-4, result


@pytest.mark.slow
def test_full_size_greyscale_convnext_takes_one_channel(reference_python, tmp_path):
    result = bench_encoders.agreement(reference_python, "convnext_nano", tmp_path / "grey", greyscale=True)
    assert encoders.describe_encoder(tmp_path / "grey").in_chans == 1
    assert result["max_error_relative_to_largest_feature"] < 1e-4, result

"""tests/benchmarks/bench_survey_predict.py (docs/benchmarks.md: survey prediction beside a hand-written loop) at a tiny size."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))

pytestmark = pytest.mark.slow


def test_the_survey_throughput_benchmark_runs_at_a_tiny_size(real_sample, tmp_path):
    import bench_survey_predict

    report = bench_survey_predict.main(["--n", "40", "--size", "48", "--repeats", "1", "--workdir", str(tmp_path)])
    assert report["galaxies_per_s"]["ours"] > 0 and report["galaxies_per_s"]["by hand"] > 0 and report["ratio"] > 0
    assert report["table"].splitlines()[2].startswith("| ours | ")
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "ours_0" / "predictions.parquet")) == 40

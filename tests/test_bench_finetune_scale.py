"""tests/benchmarks/bench_finetune_scale.py (docs/benchmarks.md: finetuning and a survey at growing sizes) at a tiny size."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def test_the_finetune_scale_benchmark_runs_at_a_tiny_size(real_sample, tmp_path):
    import bench_finetune_scale

    report = bench_finetune_scale.main(["--n", "40", "--survey-factor", "1", "--workdir", str(tmp_path)])
    figures = report["results"]["40 ours"]
    assert figures["jobs"]["write_finetune_shards"] == 2 and figures["jobs"]["predict_survey"] == 1  # one chunk per catalog
    rules = {row["rule"]: row for row in figures["rules"]}
    for rule in ("write_finetune_shards (labelled)", "write_finetune_shards (survey)", "finetune_model", "predict_survey"):
        assert rules[rule]["s"] > 0 and rules[rule]["max_rss_mb"] > 0
    assert figures["requests"]["finetune_model"] == 8000
    assert "| 40 / 40 | ours | finetune_model | 1 |" in report["table"]

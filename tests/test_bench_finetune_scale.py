"""tests/benchmarks/bench_finetune_scale.py (docs/benchmarks.md: finetuning and a survey at growing sizes), --tiny."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def test_the_finetune_scale_benchmark_runs_at_a_tiny_size(real_sample, tmp_path):
    import bench_finetune_scale

    report = bench_finetune_scale.main(["--tiny", "--workdir", str(tmp_path), "--out", str(tmp_path / "report.json")])
    figures = report["results"]["60 ours"]
    # one chunk per catalog; each catalog validated and gathered once; one model, one survey prediction
    assert figures["jobs"] == {"validate_finetune_catalog": 2, "write_finetune_shards": 2, "gather_finetune_images": 2, "finetune_model": 1,
                               "finetune_figures": 1, "predict_survey": 1, "finetune": 1}
    assert figures["total_jobs"] == 10
    assert (tmp_path / "base/results/base/model/model.keras").is_file()  # the base it finetunes, trained by the pipeline first
    assert report["finetune_settings"]["resize_size"] == 32
    rules = {row["rule"]: row for row in figures["rules"]}
    for rule in ("write_finetune_shards (labelled)", "write_finetune_shards (survey)", "finetune_model", "predict_survey",
                 "validate_finetune_catalog (labelled)", "gather_finetune_images (survey)", "finetune_figures"):
        assert rules[rule]["jobs"] == 1
        assert rules[rule]["wall_s"] > 0 and rules[rule]["cpu_s"] > 0 and rules[rule]["peak_mb"] > 0  # every job, benchmark: file or not
    for rule in ("write_finetune_shards (labelled)", "finetune_model", "predict_survey"):  # the rules with a benchmark: file
        assert rules[rule]["bench_max_rss_mb"] > 0
    assert rules["finetune_model"]["request_mb"] == 8000
    assert 0 < figures["dag_dry_run_s"] < figures["command_s"] and 0 < figures["jobs_busy_s"] <= figures["command_s"]
    assert "| finetune_model | 1 |" in report["table"] and "60 labelled / 60 survey" in report["table"]
    assert (tmp_path / "report.json").is_file()

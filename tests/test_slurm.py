"""The SLURM profile against a real one-node SLURM on localhost (tests/slurm_cluster.py).

Skips with the reason when SLURM is not installed or this is not root; with REQUIRE_SERVICES=1
(as CI sets it, after `make system-deps`) the skip becomes a failure.
"""

import json
import os
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import REPO, assert_same_numbers, run_snakemake
from slurm_cluster import local_slurm, missing_requirements

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.fixture(scope="module")
def slurm_run(slurm_env, tmp_path_factory):
    """The tiny workflow through the shipped SLURM profile, with the train rule asking for one GPU."""
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["train"]["gpus"] = 1
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    previous = dict(os.environ)
    os.environ.update(slurm_env)  # SLURM_CONF for sbatch/squeue, inherited by snakemake
    try:
        result = run_snakemake(
            workdir, configfile,
            "--profile", str(REPO / "workflow/profiles/slurm"),
            # this test cluster has no accounting and no accounts; the profile documents both keys
            "--slurm-no-account", "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
            "--slurm-keep-successful-logs", "--slurm-logdir", str(workdir / "slurm_logs"),
            # the profile's site-sized requests, cut to this 2-CPU node
            "--max-threads", "2", "--set-resources", "train_model:mem_mb=3000", "predict:mem_mb=2000",
            "--verbose",
            timeout=1200,
        )
    finally:
        os.environ.clear()
        os.environ.update(previous)
    return workdir, result


def _job_logs(workdir, rule):
    return sorted((workdir / "slurm_logs" / f"rule_{rule}").rglob("*.log"))


def test_every_output_of_the_tiny_run_is_made_through_slurm(slurm_run):
    workdir, result = slurm_run
    run = workdir / "results/tiny"
    counts = json.loads((run / "catalog/accounting.json").read_text())
    assert counts["n_in"] == 60 == counts["n_ok"] + counts["n_quarantined"]
    manifest = pd.read_parquet(run / "shards/manifest.parquet")
    assert len(manifest) == counts["n_ok"]
    assert (run / "model/model.keras").stat().st_size > 0
    for split in ("train", "val", "test", "unlabelled"):
        predictions = pd.read_parquet(run / f"predictions/{split}.parquet")
        assert sorted(predictions["id_str"]) == sorted(manifest.loc[manifest["split"] == split, "id_str"])
    assert (run / "evaluation/metrics.json").exists() and (run / "clusters/montage.png").stat().st_size > 0
    # each rule ran as its own SLURM job, not locally
    for rule in ("make_synthetic_catalog", "validate_catalog", "resize_images", "write_shards", "train_model", "predict", "cluster"):
        assert _job_logs(workdir, rule), f"no SLURM job log for rule {rule}"
    assert len(_job_logs(workdir, "resize_images")) == 3  # one job per chunk


def test_only_gpu_rules_get_a_gpu(slurm_run):
    workdir, _ = slurm_run
    logs = workdir / "logs/tiny"
    assert "CUDA_VISIBLE_DEVICES=0" in (logs / "train_model.log").read_text()  # SLURM gave the train job the (fake) GPU
    for split in ("train", "test"):
        assert "CUDA_VISIBLE_DEVICES=0" in (logs / f"predict/{split}.log").read_text()
    for cpu_log in [logs / "write_shards.log", *sorted((logs / "resize_images").glob("*.log"))]:
        text = cpu_log.read_text()
        assert "SLURM job" in text and "CUDA_VISIBLE_DEVICES=<unset>" in text, cpu_log


def test_the_cluster_run_gives_the_same_numbers_as_the_local_run(slurm_run, tiny_run):
    workdir, _ = slurm_run
    assert_same_numbers(tiny_run, workdir / "results/tiny")


def test_the_cluster_is_left_empty(slurm_run, slurm_env):
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm_env, check=True)
    assert queue.stdout.strip() == ""

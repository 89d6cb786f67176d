"""The SLURM profile against a real one-node SLURM on localhost (tests/slurm_cluster.py).

The fixtures `slurm_env` and `slurm_run` live in conftest.py: the rerun test of test_workflow.py
uses the SLURM run as its second run from scratch when SLURM is there.

Skips with the reason when SLURM is not installed or this is not root; with REQUIRE_SERVICES=1
(as CI sets it, after `make system-deps`) the skip becomes a failure.
"""

import json
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import READY_FINETUNE, REPO, assert_same_numbers, finetune_chunks_setup, run_through_slurm

pytestmark = pytest.mark.workflow


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
    for rule in ("make_synthetic_catalog", "validate_catalog", "write_shards", "combine_shards", "gather_images", "train_model", "predict", "cluster"):
        assert _job_logs(workdir, rule), f"no SLURM job log for rule {rule}"
    # one job per chunk of the catalog (images.chunk_size 25: 2), at most images.max_chunks however large the catalog
    assert len(_job_logs(workdir, "write_shards")) == len(list((run / "shards").glob("chunk_*"))) == 2
    # SLURM gave each the rule's threads (16 in the profile, cut to this node's 2 by --max-threads), not one CPU
    assert "CPUs per task 2" in (workdir / "logs/tiny/write_shards/chunk_0.log").read_text()


def test_only_gpu_rules_get_a_gpu(slurm_run):
    workdir, _ = slurm_run
    logs = workdir / "logs/tiny"
    assert "CUDA_VISIBLE_DEVICES=0" in (logs / "train_model.log").read_text()  # SLURM gave the train job the (fake) GPU
    for split in ("train", "test"):
        assert "CUDA_VISIBLE_DEVICES=0" in (logs / f"predict/{split}.log").read_text()
    for cpu_log in [logs / "write_shards/chunk_0.log", logs / "validate_catalog.log"]:
        text = cpu_log.read_text()
        assert "SLURM job" in text and "CUDA_VISIBLE_DEVICES=<unset>" in text, cpu_log


def test_an_encoder_gives_a_catalog_representations_and_clusters_through_slurm_its_job_on_a_gpu(slurm_env, tmp_path):
    """representations.encoder (a local Zoobot 2 encoder folder): no training; the encode job asks for a GPU as predict does."""
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["train"]["gpus"] = 1
    config["representations"] = {"encoder": str(REPO / "tests/fixtures/encoders/convnext_nano"), "batch_size": 8}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    run_through_slurm(slurm_env, tmp_path, configfile)
    run, logs = tmp_path / "results/tiny", tmp_path / "logs/tiny"
    assert not (run / "model").exists() and len(pd.read_parquet(run / "clusters/clusters.parquet")) > 0
    assert _job_logs(tmp_path, "encode") and _job_logs(tmp_path, "cluster")
    assert "CUDA_VISIBLE_DEVICES=0" in (logs / "encode/unlabelled.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=<unset>" in (logs / "cluster.log").read_text()


def test_the_cluster_run_gives_the_same_numbers_as_the_local_run(slurm_run, tiny_run):
    workdir, _ = slurm_run
    assert_same_numbers(tiny_run, workdir / "results/tiny")


def test_the_cluster_is_left_empty(slurm_run, slurm_env):
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=slurm_env, check=True)
    assert queue.stdout.strip() == ""


def test_a_finetuning_catalog_edit_reruns_only_its_chunk_through_slurm(slurm_env, tiny_synthetic, tmp_path):
    """The chunk jobs' rerun trigger (a digest of each chunk's galaxies, from the validation checkpoint) works where
    every job is its own SLURM job and works its params out again: one galaxy added, one chunk job submitted."""
    labels, configfile = finetune_chunks_setup(tiny_synthetic, tmp_path, 24, chunk_size=6)  # 4 chunks
    work, target = tmp_path / "work", READY_FINETUNE
    run_through_slurm(slurm_env, work, configfile, target)
    assert len(_job_logs(work, "write_finetune_shards")) == 4 and len(pd.read_parquet(work / target)) == 24
    pd.concat([labels, labels.iloc[[0]].assign(galaxy="ADDED0001")]).to_csv(tmp_path / "labels.csv", index=False)
    run_through_slurm(slurm_env, work, configfile, target)
    assert len(_job_logs(work, "write_finetune_shards")) == 5 and len(_job_logs(work, "validate_finetune_catalog")) == 2
    ready = pd.read_parquet(work / target)
    assert len(ready) == 25 and "ADDED0001" in set(ready["id_str"])

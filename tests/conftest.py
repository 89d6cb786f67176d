"""Shared fixtures: small synthetic catalogs, the real GZ DECaLS sample, and a Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "gz_decals_rings_sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 104 real DECaLS galaxies beside the checkout, or skip."""
    if not (SHARED_SAMPLE / "catalog.csv").is_file():
        pytest.skip(f"real sample not found at {SHARED_SAMPLE} (../shared is absent in this checkout)")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """60 synthetic galaxies at 64 px (4 deliberately broken, ~10% unlabelled): folder with catalog.csv and images/."""
    from zoobot_core.synthetic import SyntheticConfig, make_synthetic_catalog

    out = tmp_path_factory.mktemp("tiny_synthetic")
    make_synthetic_catalog(out, SyntheticConfig(n_galaxies=60, image_size=64, seed=7))
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_synthetic, tmp_path_factory) -> Path:
    """Shards of the tiny synthetic catalog at 32 px in one folder, written by shard_writer.write_shards from files
    already resized (its mode for images already at size: each catalog image resized once here by images.load_resized,
    the unreadable ones left out), so their catalog has a resized_loc column to write them again from."""
    from zoobot_core import catalog, images, shard_writer, shards
    from zoobot_core.schemas import get_tree

    tree = get_tree("gz_decals_dr5")
    out = tmp_path_factory.mktemp("tiny_pipeline")
    validated, _ = catalog.validate_catalog(
        tiny_synthetic / "catalog.csv", catalog.CatalogConfig(label_cols=tuple(tree.label_cols), chunk_size=25, max_quarantine_fraction=0.2)
    )
    (out / "resized").mkdir()
    resized = []
    for id_str, path in zip(validated["id_str"], validated["file_loc"]):
        try:
            images.load_resized(path, images.ResizeConfig(size=32)).save(out / "resized" / f"{id_str}.png", compress_level=1)
            resized.append(str(out / "resized" / f"{id_str}.png"))
        except images.UNREADABLE_ERRORS:
            resized.append(None)
    ready = validated.assign(**{images.RESIZED: resized}).dropna(subset=[images.RESIZED]).reset_index(drop=True)
    shard_writer.write_shards(ready, out / "shards", shards.ShardSettings(size=32, label_cols=tuple(tree.label_cols), shard_size=16, train_fraction=0.6, val_fraction=0.2))
    return out / "shards"


def run_snakemake(workdir: Path, configfile: Path, *extra: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the workflow with this checkout's Snakefile in `workdir` (in `env`, default this process's environment);
    fail the test with its log on error."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(configfile),
        "--cores", "2",
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed ({result.returncode}):\n{result.stderr[-6000:]}\n{logs}")
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """results/tiny of the whole workflow run locally on tests/configs/tiny.yaml, with the workstation profile."""
    workdir = tmp_path_factory.mktemp("workflow")
    run_snakemake(workdir, REPO / "tests/configs/tiny.yaml", "--profile", str(REPO / "workflow/profiles/workstation"))
    return workdir / "results/tiny"


def assert_same_numbers(run_a: Path, run_b: Path) -> None:
    """Two runs' shards are byte-identical and their predictions, representations, metrics and clusters equal."""
    import pandas as pd

    def shard_files(run: Path) -> list[Path]:  # the chunks' shards, not the cache's links to them (keyed by each run's own source paths)
        return sorted(p.relative_to(run) for p in (run / "shards").rglob("*.tfrecord") if not p.relative_to(run / "shards").parts[0].startswith("."))

    shards_a = shard_files(run_a)
    assert shards_a and shards_a == shard_files(run_b)
    for rel in shards_a:
        assert (run_a / rel).read_bytes() == (run_b / rel).read_bytes(), rel
    for table in ["catalog/ready.parquet", "shards/manifest.parquet", "clusters/clusters.parquet", "provenance_images.parquet",
                  *(f"{kind}/{split}.parquet" for kind in ("predictions", "prediction_samples", "representations") for split in ("train", "val", "test", "unlabelled"))]:
        a, b = (pd.read_parquet(run / table).drop(columns=["file_loc"], errors="ignore") for run in (run_a, run_b))  # absolute source paths
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=table)
    for same in ("model/recalibration.json", "evaluation/metrics.json", "evaluation/calibration.json", "evaluation/calibration.csv"):
        assert (run_a / same).read_text() == (run_b / same).read_text(), same
    ranked_a, ranked_b = (pd.read_parquet(run / "acquisition/ranked.parquet").drop(columns=["file_loc"]) for run in (run_a, run_b))
    pd.testing.assert_frame_equal(ranked_a, ranked_b, check_exact=True, obj="acquisition/ranked.parquet")
    assert (run_a / "model/history.csv").read_text() == (run_b / "model/history.csv").read_text()


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """Environment for sbatch/squeue of a local one-node SLURM, up for the session; skip (or fail with REQUIRE_SERVICES=1) without it."""
    from slurm_cluster import local_slurm, missing_requirements

    reason = missing_requirements()
    if reason:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


READY_FINETUNE = "results/tiny/finetune/labelled/catalog/ready.parquet"  # the end of a finetuning catalog's image chain


def finetune_chunks_setup(tiny_synthetic: Path, folder: Path, n: int, chunk_size: int):
    """A finetuning catalog of the first n (readable) tiny synthetic galaxies with 0/1 labels, and a config that
    resizes it in chunks of about chunk_size: (labels, config file). The catalog is written as folder/labels.csv."""
    import pandas as pd

    source = pd.read_csv(tiny_synthetic / "catalog.csv").iloc[:n]  # readable images (the broken ones come last)
    labels = pd.DataFrame({"galaxy": source["id_str"], "path": source["file_loc"], "smooth": (source.index % 2).astype(int)})
    labels.to_csv(folder / "labels.csv", index=False)
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["images"]["chunk_size"] = chunk_size
    config["finetune"] = {"base_model": "none", "catalog": str(folder / "labels.csv"), "id_column": "galaxy", "file_column": "path",
                          "label_column": "smooth", "image_size": 32, "image_root": str(tiny_synthetic), "max_quarantine_fraction": 0.0}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return labels, folder / "config.yaml"


@pytest.fixture(scope="session")
def slurm_run(slurm_env, tmp_path_factory):
    """The tiny workflow through the shipped SLURM profile, with the train rule asking for one GPU."""
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["train"]["gpus"] = 1
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return workdir, run_through_slurm(slurm_env, workdir, configfile)


def run_through_slurm(slurm_env: dict[str, str], workdir: Path, configfile: Path, *targets: str) -> subprocess.CompletedProcess:
    """Run the workflow through the shipped SLURM profile on the local test cluster; job logs under workdir/slurm_logs."""
    previous = dict(os.environ)
    os.environ.update(slurm_env)  # SLURM_CONF for sbatch/squeue, inherited by snakemake
    try:
        return run_snakemake(
            workdir, configfile,
            "--profile", str(REPO / "workflow/profiles/slurm"),
            # this test cluster has no accounting and no accounts; the profile documents both keys
            "--slurm-no-account", "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
            "--slurm-keep-successful-logs", "--slurm-logdir", str(workdir / "slurm_logs"),
            # the profile's site-sized requests, cut to this 2-CPU node
            "--max-threads", "2", "--set-resources", "train_model:mem_mb=3000", "predict:mem_mb=2000", "encode:mem_mb=2000",
            "--verbose",
            *targets,
            timeout=1200,
        )
    finally:
        os.environ.clear()
        os.environ.update(previous)


@pytest.fixture(scope="session")
def second_tiny_run(request, tmp_path_factory) -> Path:
    """results/tiny of a second run from scratch in another folder: the SLURM run when a local SLURM
    can be started (CI), else a plain local run. Either must give the same numbers as tiny_run."""
    try:
        workdir, _ = request.getfixturevalue("slurm_run")
        return workdir / "results/tiny"
    except pytest.skip.Exception:  # no SLURM here: run again locally
        pass
    workdir = tmp_path_factory.mktemp("workflow_again")
    run_snakemake(workdir, REPO / "tests/configs/tiny.yaml")
    return workdir / "results/tiny"


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    """{step: value} of one scalar over every event file in `folder`."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        values.update({e.step: float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)})
    return values

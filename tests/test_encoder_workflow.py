"""Zoobot 2 encoders through the workflow, as a user runs it: `snakemake` with representations.encoder (a catalog's
representations, clusters and neighbours with nothing trained and no votes read), fetched from a fake Hugging Face
Hub on 127.0.0.1 before any job; the offline error before any job; `snakemake finetune` from a local encoder folder.

The encoders are the timm-made fixtures (tests/fixtures/encoders): tiny networks, so each run takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, run_snakemake
from fake_hub import FakeRepo, fake_hub

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

FIXTURE = REPO / "tests" / "fixtures" / "encoders" / "convnext_nano"
REPO_ID = "someone/zoobot-encoder-convnext_nano"
COMMIT = "4f2c0b1e9d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b"


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without Hugging Face settings of the runner's own, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, **extra}


def _tiny_config(work, **sections) -> object:
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config.update(sections)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """The default target with representations.encoder = hf_hub:<a repo of the fake Hub>, run in a fresh HF_HOME."""
    work = tmp_path_factory.mktemp("encoder_run")
    files = {name: (FIXTURE / name).read_bytes() for name in ("config.json", "pytorch_model.bin")}
    configfile = _tiny_config(work, representations={"encoder": f"hf_hub:{REPO_ID}", "batch_size": 8})
    env = _clean_env(HF_HOME=str(work / "hf_home"))
    with fake_hub({REPO_ID: FakeRepo({"main": (COMMIT, files)})}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run_snakemake(work, configfile, env=env)
        requests = list(hub.requests)
    return work, configfile, env, requests


def test_representations_clusters_and_neighbours_come_from_the_encoder_with_nothing_trained(encoder_run):
    from zoobot_core.encoders import load_encoder
    from zoobot_core.images import ResizeConfig, load_resized

    work, configfile, _, requests = encoder_run
    run = work / "results" / "tiny"
    assert any(path.endswith("/pytorch_model.bin") for _, path in requests)
    assert not (run / "model").exists() and not (run / "predictions").exists()  # no training, no predictions
    ready = pd.read_parquet(run / "catalog" / "ready.parquet")
    assert (ready["shard_split"] == "unlabelled").all()  # no votes read: every galaxy is unlabelled
    representations = pd.read_parquet(run / "encoder" / "representations" / "unlabelled.parquet")
    assert sorted(representations["id_str"]) == sorted(ready["id_str"])
    assert representations.shape[1] == 1 + 40  # id_str + the fixture encoder's 40 features
    # the same numbers as the encoder on the catalog's images, resized as the pipeline resizes them
    config = yaml.safe_load(configfile.read_text())
    view = ResizeConfig(size=config["images"]["size"], draft_tolerance=config["images"]["draft_tolerance"])
    some = ready.sort_values("id_str").head(4)
    images = np.stack([np.asarray(load_resized(path, view).convert("RGB"), np.float32) / 255 for path in some["file_loc"]])
    expected = load_encoder(FIXTURE, images.shape[1:]).predict(images, verbose=0)
    got = representations.set_index("id_str").loc[some["id_str"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    clusters = pd.read_parquet(run / "clusters" / "clusters.parquet")
    assert sorted(clusters["id_str"]) == sorted(ready["id_str"])
    assert (run / "similar" / "neighbours.png").stat().st_size > 10_000
    import pyarrow.parquet as pq

    # the file says which weights made it: the configured name, the snapshot's commit, the weights' SHA-256
    recorded = json.loads(pq.read_schema(run / "encoder/representations/unlabelled.parquet").metadata[b"zoobot_encoder"])
    assert recorded["source"] == f"hf_hub:{REPO_ID}" and recorded["hf_commit"] == COMMIT and recorded["architecture"] == "convnext_nano"
    assert recorded["weights_sha256"] == hashlib.sha256((FIXTURE / "pytorch_model.bin").read_bytes()).hexdigest()
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["config"]["representations"]["encoder"] == f"hf_hub:{REPO_ID}"


def test_jobs_read_the_encoder_from_the_cache_with_no_network(encoder_run):
    """The Snakefile fetched the files before any job: with the Hub gone and Hugging Face offline, encoding runs again."""
    work, configfile, env, _ = encoder_run
    target = "results/tiny/encoder/representations/unlabelled.parquet"
    run_snakemake(work, configfile, "--forcerun", "encode", target, env={**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"})
    assert len(pd.read_parquet(work / target)) > 0


def test_offline_without_the_files_stops_before_any_job_naming_what_to_fetch(tmp_path):
    configfile = _tiny_config(tmp_path, representations={"encoder": f"hf_hub:{REPO_ID}", "batch_size": 8})
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(configfile), "--cores", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=_clean_env(HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1"))
    assert result.returncode != 0
    message = result.stderr + result.stdout
    for needed in (REPO_ID, "config.json", "pytorch_model.bin", "hf download", "HF_HOME", "representations.encoder"):
        assert needed in message, f"{needed!r} not in:\n{message[-3000:]}"
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()  # no job ran


def test_finetune_from_a_local_encoder_folder_unfreezes_its_last_stage_and_predicts_a_survey(tiny_synthetic, tmp_path):
    from zoobot_core.runtime import load_keras_model

    work = tmp_path
    folder = work / "my_encoder"
    shutil.copytree(FIXTURE, folder)  # what `hf download ... --local-dir` leaves: config.json + pytorch_model.bin
    (folder / "io.npz").unlink()
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    votes = catalog[["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk"]]
    labels = pd.DataFrame({"galaxy": catalog["id_str"], "path": catalog["file_loc"], "smooth": (votes.iloc[:, 0] > votes.iloc[:, 1]).astype(int)})
    labels.to_csv(work / "labels.csv", index=False)
    labels[["galaxy", "path"]].to_csv(work / "survey.csv", index=False)
    finetune = {
        "base_model": str(folder), "catalog": str(work / "labels.csv"), "id_column": "galaxy", "file_column": "path", "label_column": "smooth",
        "image_root": str(tiny_synthetic), "image_size": 48, "max_quarantine_fraction": 0.35,
        "settings": {"task": "binary", "folds": 3, "inner_folds": 3, "n_samples": 3, "batch_size": 8, "resize_size": 40, "unfreeze_blocks": 1, "unfreeze_epochs": 1, "patience": 1},
        "survey": {"catalog": str(work / "survey.csv"), "id_column": "galaxy", "file_column": "path", "image_root": str(tiny_synthetic)},
    }
    run_snakemake(work, _tiny_config(work, finetune=finetune), "finetune", env=_clean_env())
    out = work / "results/tiny/finetune"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base"] == f"encoder:{folder.resolve()}" and metrics["base_encoder"]["architecture"] == "convnext_nano"
    assert metrics["base_overlap"] == {"checked": False, "n_matched": None, "source": "encoder base: its training galaxies are not published with it"}
    assert metrics["final_model"]["unfrozen_blocks"] in (0, 1)  # 1 where an epoch of unfreezing beat the probe
    assert json.loads((out / "finetune_config.json").read_text())["channels"] == 3
    cv = pd.read_parquet(out / "cv_predictions.parquet")
    assert cv["finetuned_score"].between(0, 1).all() and len(cv) == metrics["n_scored"]
    history = pd.read_csv(out / "history.csv")
    assert (history["stage"] == "choose epochs").any()  # the unfreezing stage trained
    model = load_keras_model(out / "model.keras")
    assert any(layer.name == "timm_convnext_nano" for layer in model.layers)
    survey = pd.read_parquet(out / "survey/predictions.parquet")
    assert len(survey) == len(pd.read_parquet(out / "survey/catalog/ready.parquet")) and survey["smooth_probability"].between(0, 1).all()

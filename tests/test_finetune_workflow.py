"""`snakemake finetune` end to end on tiny data: bad labels quarantined, every labelled galaxy scored once out
of fold, ImageNet-layout weights as the base (greyscale images through RGB weights), a survey predicted."""

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import READY_FINETUNE, REPO, finetune_chunks_setup, run_snakemake

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))  # the benchmarks' tiny runs, and bench_rerun's job count
import bench_rerun  # noqa: E402

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def finetune_run(tiny_synthetic, tmp_path_factory):
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    work = tmp_path_factory.mktemp("finetune_workflow")
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    votes = catalog[["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk"]]
    labels = pd.DataFrame({"galaxy": catalog["id_str"], "path": catalog["file_loc"], "smooth": (votes.iloc[:, 0] > votes.iloc[:, 1]).astype(int).astype(object)})
    labels.loc[[0, 1, 2], "smooth"] = ["yes", 0.7, 3]  # not a number, fractional, outside the classes
    labels.loc[[3, 4], "smooth"] = None  # no label
    labels.to_csv(tiny_synthetic / "finetune_labels.csv", index=False)
    survey = catalog[["id_str", "file_loc"]].rename(columns={"id_str": "name", "file_loc": "png"})
    survey.to_csv(tiny_synthetic / "survey.csv", index=False)
    keras.utils.set_random_seed(0)
    weights = work / "efficientnetb0_notop.h5"
    with h5py.File(weights, "w") as f:  # the layout of Keras' ImageNet file, random weights (no download here)
        legacy_h5_format.save_weights_to_hdf5_group(f, keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(48, 48, 3), pooling="avg"))
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["finetune"] = {
        "base_model": str(weights),
        "catalog": str(tiny_synthetic / "finetune_labels.csv"),
        "id_column": "galaxy",
        "file_column": "path",
        "label_column": "smooth",
        "image_size": 48,
        "max_quarantine_fraction": 0.35,
        "settings": {"task": "binary", "folds": 3, "inner_folds": 3, "greyscale": True, "n_samples": 3, "batch_size": 8},
        "survey": {"catalog": str(tiny_synthetic / "survey.csv"), "id_column": "name", "file_column": "png", "hdf5": True},
    }
    configfile = work / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    run_snakemake(work, configfile, "finetune")
    return work / "results/tiny/finetune", labels


def test_bad_labels_are_quarantined_and_every_other_galaxy_is_scored_once(finetune_run):
    out, labels = finetune_run
    quarantine = pd.read_parquet(out / "labelled/catalog/quarantine.parquet")
    reasons = quarantine.groupby("reason")["id_str"].count().to_dict()
    assert reasons["invalid_label"] == 1 and reasons["fractional_label"] == 1 and reasons["label_out_of_range"] == 1
    assert reasons["missing_labels"] == 2
    assert {"missing_file", "empty_file", "unreadable_image"} <= set(reasons)
    ready = pd.read_parquet(out / "labelled/catalog/ready.parquet")
    assert len(ready) + len(quarantine) == len(labels)
    cv = pd.read_parquet(out / "cv_predictions.parquet")
    assert sorted(cv["id_str"]) == sorted(ready["id_str"]) and cv["id_str"].is_unique
    assert set(cv["fold"]) == {0, 1, 2} and cv["finetuned_score"].notna().all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_scored"] == len(ready) and metrics["base_overlap"] == {"checked": True, "n_matched": 0, "source": "imagenet base: trained on no galaxies"}
    assert metrics["catalog"]["n_in"] == len(labels) and metrics["catalog"]["n_quarantined"] == len(quarantine)
    assert metrics["base"] == "imagenet" and json.loads((out / "finetune_config.json").read_text())["channels"] == 1
    for name in ("scores.png", "roc.png", "surest_examples.png", "reliability.png"):
        assert (out / name).stat().st_size > 10_000
    # temperature scaling (on by default): raw and rescaled scores side by side, one temperature per fold, the final one stored
    calibration = metrics["methods"]["finetuned"]["calibration"]
    assert set(calibration["raw"]) == set(calibration["scaled"]) == {"log_loss", "brier", "ece"} and len(calibration["fold_temperatures"]) == 3
    assert json.loads((out / "finetune_config.json").read_text())["temperature"] == metrics["final_model"]["temperature"] == calibration["final_temperature"]
    assert (calibration["final_temperature"] == 1.0) != calibration["helps"]


def test_the_survey_gets_one_prediction_per_ready_galaxy(finetune_run):
    out, _ = finetune_run
    ready = pd.read_parquet(out / "survey/catalog/ready.parquet")
    predictions = pd.read_parquet(out / "survey/predictions.parquet")
    assert sorted(predictions["id_str"]) == sorted(ready["id_str"])
    assert predictions["smooth_probability"].between(0, 1).all() and predictions["smooth_probability_mc_std"].ge(0).all()
    from zoobot_core.hdf5 import load_predictions_hdf5

    samples, ids, names = load_predictions_hdf5(out / "survey/predictions.hdf5")
    assert samples.shape == (len(ready), 1, 3) and names == ["smooth_probability"] and ids == predictions["id_str"].tolist()
    # the stored temperature rescales the survey's probabilities and samples; the raw probability and the classes stay
    import numpy as np
    from scipy.special import expit, logit

    settings = json.loads((out / "finetune_config.json").read_text())
    raw = np.clip(predictions["smooth_probability_raw"].to_numpy(np.float64), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(predictions["smooth_probability"], expit(logit(raw) / settings["temperature"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(predictions["smooth_probability_mc_mean"], samples[:, 0].mean(axis=1), rtol=1e-5, atol=1e-7)
    assert (predictions["smooth_predicted"] == (predictions["smooth_probability_raw"] >= settings["threshold"])).all()


def test_imagenet_base_that_cannot_be_fetched_stops_the_run_before_any_job(tiny_synthetic, tmp_path):
    import subprocess

    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["finetune"] = {"base_model": "imagenet", "catalog": str(tiny_synthetic / "catalog.csv"), "label_column": "smooth-or-featured_smooth"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # an empty Keras cache, and a mirror address where nothing listens: no download is tried on the internet
    env = {**__import__("os").environ, "KERAS_HOME": str(tmp_path / "keras"), "ZOOBOT_CORE_IMAGENET_URL": "http://127.0.0.1:9/efficientnetb0_notop.h5"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "finetune"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode != 0
    assert str(tmp_path / "keras" / "models" / "efficientnetb0_notop.h5") in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()  # nothing ran


def test_the_bases_experiment_runs_at_a_tiny_size(tiny_synthetic, tmp_path):
    """tests/benchmarks/finetune_bases.py (the docs' table of bases on the real rings), on tiny synthetic labels."""
    import finetune_bases

    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    votes = catalog[["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk"]]
    usable = votes.notna().all(axis=1) & ~catalog["id_str"].isin(["SYN0000056", "SYN0000057", "SYN0000058", "SYN0000059"])  # labelled, readable
    labels = pd.DataFrame({"galaxy": catalog["id_str"], "path": catalog["file_loc"], "smooth": (votes.iloc[:, 0] > votes.iloc[:, 1]).astype(int)})[usable]
    labels.to_csv(tiny_synthetic / "experiment_labels.csv", index=False)  # beside the images its paths are relative to
    report = finetune_bases.main(["--bases", "none", "--seeds", "1", "2", "--unfreeze", "0", "--image-size", "48", "--workdir", str(tmp_path / "work"),
                                  "--catalog", str(tiny_synthetic / "experiment_labels.csv"), "--id-column", "galaxy", "--file-column", "path", "--label-column", "smooth"])
    assert [(r["base"], r["seed"], r["n_scored"]) for r in report["runs"]] == [("none", 1, len(labels)), ("none", 2, len(labels))]
    assert all(0 <= r["finetuned_roc_auc"] <= 1 and r["seconds"] > 0 for r in report["runs"])
    rows = report["table"].splitlines()
    assert rows[2].startswith("| none: linear probe (frozen base) | ") and " ± " in rows[2] and rows[-1].startswith("| baseline: constant | 0.500")
    assert json.loads((tmp_path / "work" / "finetune_bases.json").read_text())["table"] == report["table"]


def test_a_catalog_edit_rewrites_only_the_shard_chunks_it_changes(tiny_synthetic, tmp_path):
    """Reruns cost what the change costs: chunks follow a hash of the id, so a galaxy added, removed or given
    another image file re-resizes its own chunk only; new labels or shuffled rows re-resize nothing; crossing a
    power-of-two number of chunks redoes them all; and the ready catalog always matches the catalog."""
    labels, configfile = finetune_chunks_setup(tiny_synthetic, tmp_path, 48, chunk_size=6)  # 8 chunks
    work, target = tmp_path / "work", READY_FINETUNE
    out = work / "results/tiny/finetune/labelled"

    def copy_image(name: str) -> str:
        (tiny_synthetic / name).write_bytes((tiny_synthetic / labels["path"].iloc[0]).read_bytes())
        return name

    def rerun(catalog: pd.DataFrame) -> set[str]:
        """Run the chain on `catalog`; the chunk folders it wrote (checked against the jobs it started)."""
        before = {d.name: d.stat().st_mtime_ns for d in (out / "shards").glob("chunk_*")}
        catalog.to_csv(tmp_path / "labels.csv", index=False)
        result = run_snakemake(work, configfile, target)
        jobs = bench_rerun.resize_jobs(result.stdout + result.stderr)
        written = {d.name for d in (out / "shards").glob("chunk_*") if before.get(d.name) != d.stat().st_mtime_ns}
        assert jobs == len(written)
        ready = pd.read_parquet(work / target).set_index("id_str").loc[catalog["galaxy"]]
        assert len(ready) == len(catalog) and (ready["smooth"].to_numpy() == catalog["smooth"].to_numpy()).all()
        assert [Path(p).name for p in ready["file_loc"]] == [Path(p).name for p in catalog["path"]]
        return written

    def chunk_of(galaxy: str) -> str:
        return f"chunk_{pd.read_parquet(out / 'catalog/validated.parquet').set_index('id_str').at[galaxy, 'chunk']}"

    assert rerun(labels) == {f"chunk_{c}" for c in range(8)}
    # a new galaxy (another file of an image), the rows shuffled and every label flipped: its chunk only
    added = labels.iloc[[0]].assign(galaxy="ADDED0001", path=copy_image("added.png"))
    labels = pd.concat([labels, added], ignore_index=True).sample(frac=1, random_state=0).assign(smooth=lambda t: 1 - t["smooth"])
    assert rerun(labels) == {chunk_of("ADDED0001")}
    # labels alone: nothing resized
    labels = labels.assign(smooth=lambda t: 1 - t["smooth"])
    assert rerun(labels) == set()
    # one galaxy given another image file, one removed: their chunks only
    moved, removed = labels["galaxy"].iloc[5], labels["galaxy"].iloc[9]
    touched = {chunk_of(moved), chunk_of(removed)}
    labels.loc[labels["galaxy"] == moved, "path"] = copy_image("moved.png")
    labels = labels[labels["galaxy"] != removed]
    assert rerun(labels) == touched
    # 70 galaxies cross 8 * 6 * sqrt(2): 16 chunks, every one written afresh
    grown = labels.iloc[: 70 - len(labels)].assign(galaxy=lambda t: "MORE" + t["galaxy"], path=lambda t: [copy_image(f"more{i}.png") for i in range(len(t))])
    labels = pd.concat([labels, grown], ignore_index=True)
    assert len(labels) == 70 and rerun(labels) == {f"chunk_{c}" for c in range(16)}
    dry = run_snakemake(work, configfile, target, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_the_rerun_benchmark_runs_at_a_tiny_size(tmp_path):
    """tests/benchmarks/bench_rerun.py (docs/benchmarks.md: adding galaxies to a finetuning catalog), 60 galaxies."""
    report = bench_rerun.main(["--n", "60", "--chunk-size", "15", "--add", "1", "--repeats", "2", "--size", "32", "--workdir", str(tmp_path)])
    ours = report["results"][60]["ours"]
    assert ours["first_jobs"] == 4 and ours["add_jobs"] == [1, 1] and ours["labels_jobs"] == 0
    assert all(s > 0 for s in [ours["first_s"], *ours["add_s"], ours["labels_s"]])
    assert report["table"].splitlines()[2].startswith("| 60 | ours | ")


def test_a_survey_prediction_killed_near_the_end_resumes_where_it_stopped(finetune_run, tmp_path, monkeypatch):
    """predict_survey writes each shard's predictions as it finishes: after a failure on the last shard (what a
    kill leaves behind: whole parts, no output), the rerun predicts only that shard, and the table and the HDF5
    samples equal those of the run never interrupted (the workflow's own output). The parts stay: after an edit of
    the survey rewrote one chunk, a rerun predicts that chunk's shards alone, and the other galaxies' numbers are
    unchanged (a part depends on its own shard only)."""
    import numpy as np

    from zoobot_core import finetuned
    from zoobot_core.chunk_shards import write_chunk_shards
    from zoobot_core.hdf5 import load_predictions_hdf5
    from zoobot_core.images import ResizeConfig
    from zoobot_core.shards import ShardSettings, read_metadata

    out, _ = finetune_run
    chunks = [tmp_path / "shards" / d.name for d in sorted((out / "survey/shards").glob("chunk_*"))]
    for chunk in chunks:
        shutil.copytree(out / "survey/shards" / chunk.name, chunk)
    n_shards = len(finetuned.survey_shard_files(chunks))
    assert len(chunks) == 2 and n_shards >= 4  # 2 chunks (images.chunk_size 25), 16-galaxy shards
    predicted = []
    real = finetuned._shard_outputs

    def failing_on_the_last(*args, **kwargs):
        predicted.append(args[3])
        if len(predicted) == n_shards:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(finetuned, "_shard_outputs", failing_on_the_last)
    target, hdf5 = tmp_path / "predictions.parquet", tmp_path / "predictions.hdf5"
    parts = tmp_path / "predictions.parquet.parts"
    with pytest.raises(KeyboardInterrupt):
        finetuned.predict_survey_files(out, chunks, target, hdf5, batch_size=64, seed=7)
    assert not target.exists() and len(list(parts.glob("part_*.json"))) == n_shards - 1
    predicted.clear()
    monkeypatch.setattr(finetuned, "_shard_outputs", lambda *args, **kwargs: (predicted.append(args[3]), real(*args, **kwargs))[1])
    finetuned.predict_survey_files(out, chunks, target, hdf5, batch_size=64, seed=7)
    assert len(predicted) == 1 and len(list(parts.glob("part_*.json"))) == n_shards
    whole = pd.read_parquet(out / "survey/predictions.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(target), whole)
    resumed, expected = load_predictions_hdf5(hdf5), load_predictions_hdf5(out / "survey/predictions.hdf5")
    np.testing.assert_array_equal(resumed[0], expected[0])
    assert resumed[1:] == expected[1:]

    # an edit of the survey: the first chunk loses a galaxy and is written again; the second is untouched
    validated = pd.read_parquet(out / "survey/catalog/validated.parquet")
    dropped = validated.loc[validated["chunk"] == 0, "id_str"].iloc[0]
    meta = read_metadata(chunks[0])
    before = pd.read_parquet(chunks[0] / "manifest.parquet").groupby("shard")["shard_sha256"].first()
    shutil.rmtree(chunks[0])
    write_chunk_shards(validated[validated["id_str"] != dropped], 0, chunks[0],
                       ShardSettings(size=meta["size"], shard_size=meta["shard_size"], seed=meta["seed"], image_encoding=meta["image_encoding"]),
                       ResizeConfig(size=meta["size"]))
    predicted.clear()
    finetuned.predict_survey_files(out, chunks, target, hdf5, batch_size=64, seed=7)
    after = pd.read_parquet(chunks[0] / "manifest.parquet").groupby("shard")["shard_sha256"].first()
    changed = {chunks[0] / shard for shard, sha in after.items() if before.get(shard) != sha}
    assert changed and set(predicted) == changed  # the edited chunk's shards that changed, alone (a shard before the galaxy keeps its bytes)
    edited = pd.read_parquet(target)
    assert len(edited) == len(whole) - 1 and dropped not in set(edited["id_str"])
    untouched = set(pd.read_parquet(chunks[1] / "manifest.parquet")["id_str"])
    pd.testing.assert_frame_equal(edited[edited["id_str"].isin(untouched)].reset_index(drop=True),
                                  whole[whole["id_str"].isin(untouched)].reset_index(drop=True))
    assert len(list(parts.glob("part_*.json"))) == len(finetuned.survey_shard_files(chunks))  # no part of a shard that is gone
    # other prediction code (an upgrade of this library): every part is predicted again, not reused
    monkeypatch.setattr(finetuned, "_code_digest", lambda: "other code")
    predicted.clear()
    finetuned.predict_survey_files(out, chunks, target, hdf5, batch_size=64, seed=7)
    assert len(predicted) == len(finetuned.survey_shard_files(chunks))

"""The whole Snakemake workflow on tiny data: every output's row count and schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, assert_same_numbers, run_snakemake
from PIL import Image

from zoobot_core.hdf5 import load_predictions_hdf5
from zoobot_core.schemas import get_tree

pytestmark = pytest.mark.workflow
TREE = get_tree("gz_decals_dr5")


def test_catalog_accounting_adds_up(tiny_run):
    counts = json.loads((tiny_run / "catalog/accounting.json").read_text())
    assert counts["n_in"] == 60 == counts["n_ok"] + counts["n_quarantined"]
    assert counts["quarantined_by_reason"] == {"empty_file": 1, "missing_file": 1}
    quarantine = pd.read_parquet(tiny_run / "catalog/quarantine.parquet")
    assert list(quarantine.columns) == ["row", "id_str", "file_loc", "stage", "reason", "message"]
    ready = pd.read_parquet(tiny_run / "catalog/ready.parquet")
    assert len(ready) == counts["n_ok"] == 58 and ready["id_str"].is_unique
    assert counts["n_labelled"] + counts["n_unlabelled"] == 58 and counts["n_unlabelled"] > 0
    assert set(ready["shard_split"]) == {"train", "val", "test", "unlabelled"}  # where write_shards put each galaxy
    assert "resized_loc" not in ready  # no resized copies: the images go straight into the shards


def test_shards_cover_every_ready_galaxy_once(tiny_run):
    manifest = pd.read_parquet(tiny_run / "shards/manifest.parquet")
    ready = pd.read_parquet(tiny_run / "catalog/ready.parquet")
    assert sorted(manifest["id_str"]) == sorted(ready["id_str"])
    assert set(manifest.loc[manifest["split"] == "unlabelled", "id_str"]) == set(ready.loc[~ready["labelled"], "id_str"])
    assert {"train", "val", "test"} <= set(manifest["split"])


def test_model_and_history(tiny_run):
    history = pd.read_csv(tiny_run / "model/history.csv")
    assert list(history.columns) == ["epoch", "loss", "val_loss"] and len(history) == 1
    assert np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    config = json.loads((tiny_run / "model/model_config.json").read_text())
    assert config["label_cols"] == TREE.label_cols and config["input_size"] == 32


@pytest.mark.parametrize("split", ["train", "val", "test", "unlabelled"])
def test_predictions_and_representations_per_split(tiny_run, split):
    manifest = pd.read_parquet(tiny_run / "shards/manifest.parquet")
    ids = manifest.loc[manifest["split"] == split, "id_str"].tolist()
    predictions = pd.read_parquet(tiny_run / f"predictions/{split}.parquet")
    assert predictions["id_str"].tolist() == ids
    expected = ["id_str"] + [f"{c}_{k}" for c in TREE.label_cols for k in ("concentration", "fraction", "fraction_std", "concentration_raw")]
    assert list(predictions.columns) == expected  # recalibrated (the default), with the raw network's concentrations beside
    raw = predictions[[f"{c}_concentration_raw" for c in TREE.label_cols]].to_numpy()
    assert ((raw > 1) & (raw < 101)).all()  # the head's range
    assert (predictions[[f"{c}_concentration" for c in TREE.label_cols]].to_numpy() > 0).all()
    for question in TREE.questions:
        fractions = predictions[[f"{TREE.column(question.name, a)}_fraction" for a in question.answers]].sum(axis=1)
        np.testing.assert_allclose(fractions, 1.0, rtol=1e-5)
    representations = pd.read_parquet(tiny_run / f"representations/{split}.parquet")
    assert representations["id_str"].tolist() == ids
    assert representations.shape == (len(ids), 1281)
    assert representations.drop(columns="id_str").dtypes.eq(np.float32).all()
    # tiny.yaml: 2 dihedral views x 2 dropout samples; the HDF5 file holds the same samples in Zoobot's layout
    samples = pd.read_parquet(tiny_run / f"prediction_samples/{split}.parquet")
    assert len(samples) == 4 * len(ids) and sorted(set(zip(samples["view"], samples["sample"]))) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    concentrations, hdf5_ids, label_cols = load_predictions_hdf5(tiny_run / f"predictions/{split}.hdf5")
    assert hdf5_ids == ids and label_cols == TREE.label_cols and concentrations.shape == (len(ids), len(label_cols), 4)
    np.testing.assert_allclose(concentrations.mean(axis=2), predictions[[f"{c}_concentration" for c in TREE.label_cols]], rtol=1e-5)


def test_evaluation_and_clusters(tiny_run):
    metrics = json.loads((tiny_run / "evaluation/metrics.json").read_text())
    assert set(metrics["vote_fraction_mae"]) == {"model", "constant", "ratio"}
    per_question = pd.read_csv(tiny_run / "evaluation/per_question.csv")
    assert per_question["question"].tolist() == TREE.question_names
    clusters = pd.read_parquet(tiny_run / "clusters/clusters.parquet")
    assert len(clusters) == 58 and set(clusters["cluster"]) == {0, 1, 2}
    assert [c for c in clusters.columns if c.startswith("pca_")] == [f"pca_{i:02d}" for i in range(4)]
    with Image.open(tiny_run / "clusters/montage.png") as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 300
    pca = pd.read_parquet(tiny_run / "representations/pca.parquet")
    assert pca["id_str"].tolist() == clusters["id_str"].tolist() and set(pca["split"]) == {"train", "val", "test", "unlabelled"}
    assert pca.filter(like="pca_").shape == (58, 4)


def test_confident_confusion_and_similar_galaxies(tiny_run):
    confident = pd.read_csv(tiny_run / "evaluation/confident.csv")
    assert confident["question"].tolist() == TREE.question_names
    confusion = pd.read_csv(tiny_run / "evaluation/confusion.csv")
    assert confusion.groupby("question")["count"].sum().reindex(TREE.question_names).tolist() == confident["n_confident"].tolist()
    assert (tiny_run / "report/confusion.png").stat().st_size > 5000
    neighbours = pd.read_parquet(tiny_run / "similar/neighbours.parquet")
    assert neighbours.groupby("query_id")["rank"].apply(list).to_dict() == {"SYN0000000": [1, 2, 3], "SYN0000003": [1, 2, 3]}
    assert (neighbours["id_str"] != neighbours["query_id"]).all()
    assert neighbours.groupby("query_id")["distance"].apply(lambda d: d.is_monotonic_increasing).all()  # nearest first
    assert (tiny_run / "similar/neighbours.png").stat().st_size > 5000


def test_recalibration_study_on_the_tiny_run(tiny_run, tmp_path):
    """make recalibration-study at a tiny size: every method fitted on validation and scored on test, and BALD raw vs recalibrated."""
    from zoobot_core.acquisition import AcquireConfig
    from zoobot_core.recalibration_study import STUDY_METHODS, recalibration_study

    summary = recalibration_study(tiny_run, tmp_path, None, AcquireConfig(), "unlabelled", top_n=3)  # the run's own settings
    methods = pd.read_csv(tmp_path / "methods.csv")
    per_question = pd.read_csv(tmp_path / "per_question.csv")
    assert methods["method"].tolist() == list(STUDY_METHODS)
    headline = json.loads((tiny_run / "evaluation/calibration.json").read_text())
    # the raw row is the calibration rule's raw network, and auto (the default) is the rule's posterior
    assert methods.loc[0, "nll_per_galaxy"] == pytest.approx(headline["nll_per_galaxy"]["raw"], rel=1e-5)
    # (to the float32 rounding of the stored samples the study recovers the raw ones from)
    assert methods.loc[3, "nll_per_galaxy"] == pytest.approx(headline["nll_per_galaxy"]["model"], rel=1e-4)
    recorded = json.loads((tiny_run / "model/recalibration.json").read_text())["questions"]
    fitted = per_question[per_question["method"] == "auto"].set_index("question")
    for name, entry in recorded.items():  # the study's auto is the pipeline's: the run's own seed and settings
        assert fitted.loc[name, "scale"] == pytest.approx(entry["scale"], rel=1e-3) and fitted.loc[name, "power"] == pytest.approx(entry["power"], abs=1e-3)
    assert methods["vote_fraction_mae"].nunique() == 1 or np.ptp(methods["vote_fraction_mae"]) < 1e-6  # every map keeps the fractions
    assert len(per_question) == len(STUDY_METHODS) * len(TREE.questions)
    bald = json.loads((tmp_path / "bald.json").read_text())
    n_unlabelled = len(pd.read_parquet(tiny_run / "shards/manifest.parquet").query("split == 'unlabelled'"))
    assert bald["n_pool"] == n_unlabelled and 0 <= bald["top_overlap"] <= bald["top_n"] == min(3, n_unlabelled)
    assert sum(bald["composition"]["pool"].values()) == pytest.approx(1.0)
    assert summary["calibrated_reference"]["replicates"] == 20


def test_calibration_and_acquisition(tiny_run):
    table = pd.read_csv(tiny_run / "evaluation/calibration.csv")
    assert table["question"].tolist() == TREE.question_names
    test_ids = pd.read_parquet(tiny_run / "shards/test_catalog.parquet")["id_str"]
    assert table["n_galaxies"].max() <= len(test_ids) and (table["n_galaxies"] > 0).all()
    for level in ("0.5", "0.8", "0.95"):
        assert table[f"coverage_{level}"].between(0, 1).all() and (table[f"expected_{level}"] >= float(level)).all()
    assert np.isfinite(table[["nll_model", "nll_constant", "nll_difference_low", "nll_difference_high"]].to_numpy()).all()
    assert (table["coverage_0.8_low"] <= table["coverage_0.8"]).all() and (table["coverage_0.8"] <= table["coverage_0.8_high"]).all()
    headline = json.loads((tiny_run / "evaluation/calibration.json").read_text())
    assert headline["n_test"] == len(test_ids) and set(headline["coverage"]) == {"0.5", "0.8", "0.95"}
    curve = pd.read_csv(tiny_run / "evaluation/calibration_curve.csv")
    assert set(curve["question"]) == {*TREE.question_names, "all"}
    assert (tiny_run / "report/calibration.png").stat().st_size > 5000

    # the recalibration: fitted on the validation split, applied by predict, scored beside the raw network
    recalibration = json.loads((tiny_run / "model/recalibration.json").read_text())
    assert recalibration["fitted_on"] == "val" and recalibration["n_val"] == len(pd.read_parquet(tiny_run / "shards/val_catalog.parquet"))
    statuses = [q["status"] for q in recalibration["questions"].values()]
    assert "fitted" in statuses and any("fewer than min_galaxies=8" in s for s in statuses)
    assert headline["posterior"].startswith("recalibrated") and set(headline["recalibration"]) == set(TREE.question_names)
    assert {"raw_coverage_0.8", "raw_coverage_0.8_low", "nll_raw", "raw_nll_difference"} <= set(table.columns)
    assert {"model", "raw", "constant"} == set(curve["predictor"])
    nll = headline["nll_per_galaxy"]
    assert nll["raw"] != nll["model"] and nll["raw_difference"] == pytest.approx(nll["raw"] - nll["constant"])
    predictions = pd.read_parquet(tiny_run / "predictions/test.parquet")
    samples = pd.read_parquet(tiny_run / "prediction_samples/test.parquet")
    from zoobot_core.dirichlet import samples_array
    from zoobot_core.recalibration import invert_recalibration

    ids, calibrated = samples_array(samples, TREE.label_cols)
    raw = invert_recalibration(calibrated, recalibration, TREE)
    by_id = predictions.set_index("id_str").loc[ids]
    np.testing.assert_allclose(by_id[[f"{c}_concentration" for c in TREE.label_cols]].to_numpy(), calibrated.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(by_id[[f"{c}_concentration_raw" for c in TREE.label_cols]].to_numpy(), raw.mean(axis=1), rtol=1e-4)
    pit = pd.read_csv(tiny_run / "evaluation/calibration_pit.csv")
    np.testing.assert_allclose(pit.groupby(["question", "predictor"])["fraction"].sum(), 1.0)
    assert set(pit["predictor"]) == {"model", "raw"} and (tiny_run / "report/calibration_pit.png").stat().st_size > 5000
    assert json.loads((tiny_run / "evaluation/metrics.json").read_text())["posterior"].startswith("recalibrated")
    import h5py

    with h5py.File(tiny_run / "predictions/test.hdf5") as f:  # the Zoobot-layout export says which map its samples carry
        assert json.loads(f.attrs["recalibration"])["questions"] == recalibration["questions"]

    ranked = pd.read_parquet(tiny_run / "acquisition/ranked.parquet")
    unlabelled = pd.read_parquet(tiny_run / "shards/manifest.parquet").query("split == 'unlabelled'")["id_str"]
    assert sorted(ranked["id_str"]) == sorted(unlabelled) and ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert ranked["mutual_information"].is_monotonic_decreasing and (ranked["mutual_information"] >= 0).all()
    assert {f"{q}_mi" for q in TREE.question_names} <= set(ranked.columns)
    top = pd.read_csv(tiny_run / "acquisition/top.csv")
    assert top["id_str"].tolist() == ranked["id_str"].head(len(top)).tolist() and all(map(os.path.isfile, top["file_loc"]))
    assert (tiny_run / "acquisition/next_to_label.png").stat().st_size > 5000


def test_every_rule_logged_and_a_rerun_has_nothing_to_do(tiny_run):
    workdir = tiny_run.parent.parent
    logs = {p.name for p in (workdir / "logs/tiny").rglob("*.log")}
    assert {"make_synthetic_catalog.log", "validate_catalog.log", "gather_images.log", "combine_shards.log", "train_model.log", "evaluate.log", "cluster.log",
            "calibration.log", "acquire.log", "recalibrate.log"} <= logs
    chunks = sorted(p.name for p in (tiny_run / "shards").glob("chunk_*"))
    assert len(chunks) == 2 and sorted(p.stem for p in (workdir / "logs/tiny/write_shards").glob("*.log")) == chunks  # one job per chunk
    dry = run_snakemake(workdir, REPO / "tests/configs/tiny.yaml", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_own_catalog_with_other_column_names_jpg_and_parquet(tiny_synthetic, tmp_path):
    """A user's catalog: their column names, jpg images under an image root, vote columns spelled -dr5."""
    images = tmp_path / "cutouts"
    images.mkdir()
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv").iloc[:-4]  # its 4 broken rows are tested elsewhere
    paths = []
    for id_str, rel in zip(catalog["id_str"], catalog["file_loc"]):
        Image.open(tiny_synthetic / rel).convert("RGB").save(images / f"{id_str}.jpg", quality=92)
        paths.append(f"{id_str}.jpg")
    suffixed = get_tree("gz_decals_dr5", "-dr5")
    user = catalog.rename(columns=dict(zip(TREE.label_cols, suffixed.label_cols)) | {"id_str": "iauname"})
    user["jpg_path"] = paths
    user = user.drop(columns=["file_loc"])
    user.to_parquet(tmp_path / "my_catalog.parquet")
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["run_name"] = "mine"
    config["synthetic"]["enabled"] = False
    config["catalog"] = {
        "path": str(tmp_path / "my_catalog.parquet"), "id_column": "iauname", "file_column": "jpg_path",
        "image_root": str(images), "tree": "gz_decals_dr5", "question_suffix": "-dr5",
        "allow_unlabelled": True, "max_quarantine_fraction": 0.05,
    }
    # only what this test reads: the test split predicted and clustered (the full set of outputs is tiny_run's)
    config["predict"] |= {"splits": ["test"], "tta_views": 1, "hdf5": False}
    config["cluster"] |= {"splits": ["test"], "query_ids": []}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/mine/{path}" for path in ("catalog/accounting.json", "predictions/test.parquet", "clusters/clusters.parquet")]
    run_snakemake(tmp_path / "work", tmp_path / "mine.yaml", *targets)
    out = tmp_path / "work/results/mine"
    counts = json.loads((out / "catalog/accounting.json").read_text())
    assert counts["n_in"] == counts["n_ok"] == len(user) and counts["n_quarantined"] == 0
    ready = pd.read_parquet(out / "catalog/ready.parquet")
    assert set(ready["id_str"]) <= set(user["iauname"]) and "-dr5" in " ".join(ready.columns)
    manifest = pd.read_parquet(out / "shards/manifest.parquet")
    assert len(manifest) == counts["n_ok"]
    predictions = pd.read_parquet(out / "predictions/test.parquet")
    assert f"{suffixed.label_cols[0]}_fraction" in predictions.columns
    assert sorted(predictions["id_str"]) == sorted(manifest.loc[manifest["split"] == "test", "id_str"])
    assert sorted(pd.read_parquet(out / "clusters/clusters.parquet")["id_str"]) == sorted(predictions["id_str"])


def _synthetic_catalog_with_tree(tree: Path) -> dict:
    """The catalog section of a config whose synthetic votes follow the decision tree file `tree`."""
    return {
        "path": None, "id_column": "id_str", "file_column": "file_loc", "image_root": None, "tree": str(tree),
        "question_suffix": "", "allow_unlabelled": True, "max_quarantine_fraction": 0.05,
    }


def _dry_run_fails(tmp_path: Path, config: dict) -> str:
    """Dry-run the workflow on `config`; assert it fails and return what it printed."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/Snakefile"), "--directory", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml"), "-n"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_a_users_own_decision_tree_runs_the_whole_workflow(tmp_path):
    """catalog.tree names a made-up tree file: synthetic votes, loss, evaluation, calibration, acquisition and the
    report figures all follow its questions, and the model carries the tree, so predicting needs no tree file."""
    made_up = REPO / "tests/configs/made_up_tree.yaml"
    tree = get_tree(str(made_up))
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["run_name"] = "made_up"
    config["catalog"] = _synthetic_catalog_with_tree(made_up)
    # and the reproducibility settings reach the training job: oneDNN's instruction-set cap and a fixed thread count
    config["onednn_max_isa"] = "AVX2"
    config["train"]["threads"] = 3
    (tmp_path / "made_up.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path / "work", tmp_path / "made_up.yaml")
    out = tmp_path / "work/results/made_up"
    model_config = json.loads((out / "model/model_config.json").read_text())
    assert model_config["label_cols"] == tree.label_cols and model_config["tree_definition"] == tree.to_dict()
    environment = model_config["environment"]
    assert environment["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and environment["tensorflow"]["intra_op_threads"] == 3  # on 2 cores
    predictions = pd.read_parquet(out / "predictions/test.parquet")
    assert list(predictions.columns) == ["id_str"] + [f"{c}_{k}" for c in tree.label_cols for k in ("concentration", "fraction", "fraction_std", "concentration_raw")]
    for question in tree.questions:
        fractions = predictions[[f"{tree.column(question.name, a)}_fraction" for a in question.answers]].sum(axis=1)
        np.testing.assert_allclose(fractions, 1.0, rtol=1e-5)
    assert pd.read_csv(out / "evaluation/per_question.csv")["question"].tolist() == tree.question_names
    assert pd.read_csv(out / "evaluation/calibration.csv")["question"].tolist()[: len(tree.questions)] == tree.question_names
    ranked = pd.read_parquet(out / "acquisition/ranked.parquet")
    assert {f"{q}_mi" for q in tree.question_names} <= set(ranked.columns) and "bar_mi" not in ranked.columns
    for figure in ("confusion.png", "per_question.png", "calibration.png", "prediction_examples.png"):
        assert (out / "report" / figure).stat().st_size > 0, figure


def test_a_malformed_tree_file_stops_the_run_at_start(tmp_path):
    broken = yaml.safe_load((REPO / "tests/configs/made_up_tree.yaml").read_text())
    broken["questions"][2]["asked_if"] = {"question": "ring", "answer": "maybe"}
    (tmp_path / "tree.yaml").write_text(yaml.safe_dump(broken))
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["catalog"] = _synthetic_catalog_with_tree(tmp_path / "tree.yaml")
    output = _dry_run_fails(tmp_path, config)
    assert f"Decision tree file {tmp_path / 'tree.yaml'} is not a valid decision tree" in output
    assert "'ring-kind' is asked_if answer 'maybe' of 'ring', which has no such answer" in output


def test_config_errors_are_reported_before_running(tmp_path):
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["images"]["size"] = "big"
    output = _dry_run_fails(tmp_path, config)
    assert "'big'" in output and "['images']['size']" in output


def test_after_a_crash_while_writing_shards_validation_is_not_redone(tiny_run):
    """A crash while resizing into shards leaves no shards and nothing downstream: the rerun writes the shard chunks
    (2 for the tiny catalog), combines and gathers them, and does not validate the catalog again."""
    workdir = tiny_run.parent.parent
    lost = [tiny_run / "shards", *(tiny_run / "catalog" / n for n in ("ready.parquet", "quarantine.parquet", "accounting.json"))]
    aside = workdir / "aside"
    aside.mkdir()
    for path in lost:
        path.rename(aside / path.name)
    try:
        dry = run_snakemake(workdir, REPO / "tests/configs/tiny.yaml", "-n", "results/tiny/catalog/ready.parquet", "results/tiny/shards/shards.json")
    finally:
        for path in lost:
            (aside / path.name).rename(path)
    out = dry.stdout + dry.stderr
    rows = out[out.index("Job stats"):].splitlines()[3:]  # after the title, header and rule lines
    jobs = dict(line.split() for line in rows[: rows.index("")] if not line.startswith("total"))
    assert jobs == {"write_shards": "2", "combine_shards": "1", "gather_images": "1"}


def test_a_catalog_edit_rewrites_only_the_main_shard_chunks_it_changes(tiny_synthetic, tmp_path):
    """The main chain's shards are chunks that follow a hash of the id, as a finetuning catalog's are: a galaxy added,
    or one galaxy's votes corrected, rewrites its own chunk only (the shards hold the votes); shuffled rows rewrite
    nothing; the combined shards always list exactly the catalog's galaxies with their votes."""
    sys.path.insert(0, str(REPO / "tests/benchmarks"))
    from bench_rerun import resize_jobs

    catalog = pd.read_csv(tiny_synthetic / "catalog.csv").iloc[:48]  # readable images (the broken ones come last)
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["synthetic"]["enabled"] = False
    config["catalog"] = {"path": str(tmp_path / "catalog.csv"), "image_root": str(tiny_synthetic)}
    config["images"]["chunk_size"] = 6  # 8 chunks
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work, targets = tmp_path / "work", ("results/tiny/shards/shards.json", "results/tiny/catalog/ready.parquet")
    shards = work / "results/tiny/shards"

    def rerun(edited: pd.DataFrame) -> set[str]:
        before = {d.name: d.stat().st_mtime_ns for d in shards.glob("chunk_*")}
        edited.to_csv(tmp_path / "catalog.csv", index=False)
        result = run_snakemake(work, tmp_path / "config.yaml", *targets)
        written = {d.name for d in shards.glob("chunk_*") if before.get(d.name) != d.stat().st_mtime_ns}
        assert resize_jobs(result.stdout + result.stderr, ("write_shards",)) == len(written)
        manifest = pd.read_parquet(shards / "manifest.parquet")
        assert sorted(manifest["id_str"]) == sorted(edited["id_str"])
        held = pd.concat([pd.read_parquet(shards / f"{s}_catalog.parquet") for s in ("train", "val", "test")]).set_index("id_str")
        expected = edited.set_index("id_str").loc[held.index, TREE.label_cols]
        np.testing.assert_array_equal(held[TREE.label_cols].to_numpy(float), expected.to_numpy(float))
        return written

    def chunk_of(galaxy: str) -> str:
        return f"chunk_{pd.read_parquet(work / 'results/tiny/catalog/validated.parquet').set_index('id_str').at[galaxy, 'chunk']}"

    assert rerun(catalog) == {f"chunk_{c}" for c in range(8)}
    added = catalog.iloc[[0]].assign(id_str="ADDED0001")
    catalog = pd.concat([catalog, added], ignore_index=True).sample(frac=1, random_state=0)  # and the rows shuffled
    assert rerun(catalog) == {chunk_of("ADDED0001")}
    corrected = catalog["id_str"].iloc[7]
    catalog.loc[catalog["id_str"] == corrected, TREE.label_cols[0]] += 3
    assert rerun(catalog) == {chunk_of(corrected)}
    assert rerun(catalog.sample(frac=1, random_state=1)) == set()


def _jobs_after_edit(tiny_run: Path, tmp_path: Path, edit) -> dict[str, int]:
    """Dry-run the finished tiny run with an edited copy of its config: the jobs Snakemake would run, by rule."""
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    edit(config)
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(config))
    dry = run_snakemake(tiny_run.parent.parent, tmp_path / "edited.yaml", "-n", "--profile", str(REPO / "workflow/profiles/workstation"))
    out = dry.stdout + dry.stderr
    if "Job stats" not in out:
        return {}
    rows = out[out.index("Job stats"):].splitlines()[3:]
    return {rule: int(n) for rule, n in (line.split() for line in rows[: rows.index("")]) if rule != "total"}


EXPENSIVE = {"validate_catalog", "write_shards", "train_model", "predict"}


@pytest.mark.parametrize(
    "setting, edit",
    [
        ("catalog.max_quarantine_fraction", lambda c: c.setdefault("catalog", {}).update(max_quarantine_fraction=0.5)),
        ("train.tensorboard", lambda c: c.setdefault("train", {}).update(tensorboard=not c["train"].get("tensorboard", True))),
        ("train.gpus", lambda c: c.setdefault("train", {}).update(gpus=1)),
    ],
)
def test_a_setting_that_changes_no_output_reruns_nothing_expensive(tiny_run, tmp_path, setting, edit):
    """Reruns cost what the change costs: the quarantine limit re-gathers (seconds), the GPU request
    and the TensorBoard switch retrain nothing; no edit validates, resizes, trains or predicts again."""
    unchanged = _jobs_after_edit(tiny_run, tmp_path, lambda c: None)
    assert unchanged == {}, f"the finished run is not up to date: {unchanged}"
    jobs = _jobs_after_edit(tiny_run, tmp_path, edit)
    assert not EXPENSIVE & set(jobs), f"{setting}: {jobs}"
    if setting == "catalog.max_quarantine_fraction":
        assert "gather_images" in jobs


def test_provenance_records_config_versions_and_checksums(tiny_run):
    import hashlib

    provenance = json.loads((tiny_run / "provenance.json").read_text())
    assert provenance["config"]["run_name"] == "tiny" and provenance["seed"] == 7
    assert {"keras", "numpy", "pandas", "snakemake"} <= set(provenance["packages"])
    assert provenance["project"] is None or len(provenance["project"]["commit"]) == 40
    manifest = pd.read_parquet(tiny_run / "shards/manifest.parquet")
    assert provenance["shards"]["files"] == dict(zip(manifest["shard"], manifest["shard_sha256"]))
    for shard, checksum in provenance["shards"]["files"].items():
        assert hashlib.sha256((tiny_run / "shards" / shard).read_bytes()).hexdigest() == checksum
    images = pd.read_parquet(tiny_run / "provenance_images.parquet")
    assert provenance["inputs"]["n_images"] == len(images) == 58
    first = images.iloc[0]
    assert hashlib.sha256((tiny_run.parent.parent / first["file_loc"]).read_bytes()).hexdigest() == first["sha256"]
    # what decides the model's last bits, as the training job saw it (README: Reproducible reruns)
    trained = provenance["training_environment"]
    assert trained == json.loads((tiny_run / "model/model_config.json").read_text())["environment"]
    assert trained["cpu"]["machine"] and trained["cpu"]["usable_cores"] >= 1 and isinstance(trained["cpu"]["isa"], list)
    assert trained["keras_backend"] == "tensorflow" and trained["tensorflow"]["intra_op_threads"] == 2  # tiny.yaml's train.threads
    assert isinstance(trained["tensorflow"]["onednn"], bool) and "TF_ENABLE_ONEDNN_OPTS" in trained["env"]
    assert provenance["cpu"]["logical_cores"] >= 1


def test_a_second_run_from_scratch_gives_the_same_shards_and_numbers(tiny_run, second_tiny_run):
    assert_same_numbers(tiny_run, second_tiny_run)
    first, second = (json.loads((run / "provenance.json").read_text()) for run in (tiny_run, second_tiny_run))
    assert first["shards"]["digest"] == second["shards"]["digest"]
    assert {k: v for k, v in first["inputs"].items() if k != "catalog"} == {k: v for k, v in second["inputs"].items() if k != "catalog"}


def test_the_rerun_benchmark_runs_on_the_main_chain_at_a_tiny_size(tmp_path):
    """tests/benchmarks/bench_rerun.py --chain main (docs/benchmarks.md: editing the main catalog), 60 galaxies."""
    sys.path.insert(0, str(REPO / "tests/benchmarks"))
    import bench_rerun

    report = bench_rerun.main(["--chain", "main", "--n", "60", "--chunk-size", "15", "--add", "1", "--repeats", "2", "--size", "32",
                               "--workdir", str(tmp_path)])
    ours = report["results"][60]["ours"]
    assert ours["first_jobs"] == 4 and ours["add_jobs"] == [1, 1] and ours["labels_jobs"] == 1  # a corrected galaxy: its chunk
    assert all(s > 0 for s in [ours["first_s"], *ours["add_s"], ours["labels_s"]])
    assert "votes corrected" in report["table"].splitlines()[0]

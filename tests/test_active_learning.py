"""The active-learning experiment (make active-learning) at a tiny size, and the pieces it is made of."""

import json

import numpy as np
import pandas as pd
import pytest

from zoobot_core.active_learning import ActiveLearningConfig, choose, labels_to_reach, run_experiment, summarise
from zoobot_core.schemas import get_tree
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import ShardSettings


def test_labels_to_reach_interpolates_between_rounds():
    curve = pd.DataFrame({"n_labelled": [100, 200, 300], "test_loss": [50.0, 40.0, 30.0]})
    assert labels_to_reach(curve, 35.0) == pytest.approx(250)
    assert labels_to_reach(curve, 60.0) == 100
    assert np.isnan(labels_to_reach(curve, 20.0))


def test_summary_compares_bald_with_randoms_final_loss():
    curves = pd.DataFrame({
        "seed": [0] * 6, "strategy": ["bald"] * 3 + ["random"] * 3, "n_labelled": [100, 200, 300] * 2,
        "test_loss": [50.0, 36.0, 30.0, 50.0, 44.0, 40.0], "first_question_loss": [5.0, 4.0, 3.0, 5.0, 4.0, 3.0],
        "vote_fraction_mae": 0.1, "confident_accuracy": 0.9,
    })
    rows = summarise(curves)["per_seed"]
    assert [r["metric"] for r in rows] == ["test_loss", "first_question_loss"]
    assert rows[1]["label_saving"] == 0.0
    row = rows[0]
    assert row["target_loss"] == 40.0 and row["random_labels"] == 300
    assert row["bald_labels"] == pytest.approx(100 + 100 * 10 / 14)
    assert row["label_saving"] == pytest.approx(1 - row["bald_labels"] / 300)


def test_choose_takes_the_highest_information_or_a_seeded_random_draw():
    scores = pd.DataFrame({"id_str": list("abcdef"), "mutual_information": [0.1, 0.5, 0.3, 0.9, 0.0, 0.2]})
    assert choose("bald", scores, 2, np.random.default_rng(0)) == ["d", "b"]
    assert choose("random", scores, 3, np.random.default_rng(1)) == choose("random", scores, 3, np.random.default_rng(1))
    with pytest.raises(ValueError, match="Unknown strategy"):
        choose("entropy", scores, 1, np.random.default_rng(0))


def test_shards_follow_a_given_split_column(tmp_path):
    from PIL import Image

    tree = get_tree("gz_decals_dr5")
    rows = []
    for i, split in enumerate(["train", "val", "test", "unlabelled", "train"]):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        rows.append({"id_str": f"g{i}", "resized_loc": str(tmp_path / f"{i}.png"), "role": split, "labelled": split != "unlabelled", **dict.fromkeys(tree.label_cols, 1)})
    catalog = pd.DataFrame(rows)
    manifest = write_shards(catalog, tmp_path / "shards", ShardSettings(size=8, label_cols=tuple(tree.label_cols)), split_col="role")
    assert dict(zip(manifest["id_str"], manifest["split"])) == dict(zip(catalog["id_str"], catalog["role"]))
    with pytest.raises(ValueError, match="unknown split"):
        write_shards(catalog.assign(role="holdout"), tmp_path / "other", ShardSettings(size=8, label_cols=tuple(tree.label_cols)), split_col="role")


@pytest.mark.slow
def test_tiny_experiment_runs_both_strategies_and_resumes(tmp_path):
    config = ActiveLearningConfig(n_pool=40, n_test=20, n_val=12, n_initial=10, n_acquire=10, rounds=1, seeds=(0,), image_size=48, epochs=1, patience=1)
    curves = run_experiment(tmp_path, config)
    assert sorted(zip(curves["strategy"], curves["n_labelled"])) == [("bald", 10), ("bald", 20), ("random", 10), ("random", 20)]
    assert np.isfinite(curves[["test_loss", "first_question_loss", "vote_fraction_mae", "confident_accuracy"]].to_numpy()).all()
    record = json.loads((tmp_path / "rounds/seed0/round0/record.json").read_text())
    assert sum(record["question_losses"].values()) == pytest.approx(record["test_loss"])
    first = curves.groupby("n_labelled").get_group(10)
    assert first["test_loss"].nunique() == 1  # both strategies start from the same model
    bald = json.loads((tmp_path / "rounds/seed0/bald_round1/record.json").read_text())["labelled"]
    random = json.loads((tmp_path / "rounds/seed0/random_round1/record.json").read_text())["labelled"]
    start = json.loads((tmp_path / "rounds/seed0/round0/record.json").read_text())["labelled"]
    assert set(start) < set(bald) and set(start) < set(random) and len(bald) == len(random) == 20
    scores = pd.read_parquet(tmp_path / "rounds/seed0/round0/pool_scores.parquet")
    assert set(bald) - set(start) == set(scores.nlargest(10, "mutual_information")["id_str"])
    chosen = pd.read_csv(tmp_path / "composition.csv").set_index("chosen_by")
    assert chosen.loc[["bald", "random"], "n"].tolist() == [10, 10] and chosen.loc["pool", "n"] == 40
    assert chosen.drop(columns="n").sum(axis=1).round(9).eq(1).all()
    for name in ("learning_curves.csv", "learning_curves.png", "summary.json", "config.json"):
        assert (tmp_path / name).stat().st_size > 0
    again = run_experiment(tmp_path, config)  # every round is on disk: nothing is trained again
    pd.testing.assert_frame_equal(curves, again)

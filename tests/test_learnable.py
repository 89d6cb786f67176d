"""The default training setup learns: on held-out synthetic galaxies it beats a constant predictor clearly.

Honest by construction: test galaxies are never trained on (hash split), the constant predictor
is the training set's mean vote fractions, and the training settings are the default config's
(`config/config.yaml`), only with fewer galaxies and epochs to fit in CI.

The training runs in a fresh interpreter: a CPU training's last bits follow TensorFlow's thread pools, which the
first TensorFlow call of a process fixes, so after other tests (in any order) the same training took another path
and missed the margin (seen: first-question accuracy 0.58 against 0.69 alone, on the code before and after issue 25).
What is tested is what the default config learns, as a user's own run of it would.
"""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from zoobot_core import catalog, evaluate, images, predict, shard_writer, shards, train
from zoobot_core.schemas import get_tree
from zoobot_core.synthetic import SyntheticConfig, make_synthetic_catalog

pytestmark = pytest.mark.slow


def _train_and_evaluate(folder: str) -> tuple[dict, float]:
    """The default config's training on 900 synthetic galaxies (10 epochs): the first question's metrics and the
    vote-weighted MAE ratio to the constant predictor over every question."""
    tmp_path = Path(folder)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    tree = get_tree(config["catalog"]["tree"], config["catalog"]["question_suffix"])
    size = config["images"]["size"]
    make_synthetic_catalog(tmp_path / "syn", SyntheticConfig(n_galaxies=900, image_size=size, seed=11, n_broken=0, unlabelled_fraction=0.0))
    validated, _ = catalog.validate_catalog(tmp_path / "syn/catalog.csv", catalog.CatalogConfig(label_cols=tuple(tree.label_cols), chunk_size=1000))
    # the catalog's images resized straight into shards, as the workflow's shard jobs do
    shard_writer.write_shards(validated, tmp_path / "shards", shards.ShardSettings(size=size, label_cols=tuple(tree.label_cols), seed=11, train_fraction=0.8,
                              val_fraction=0.1), source_col="file_loc", resize=images.ResizeConfig(size=size))
    settings = {k: v for k, v in config["train"].items() if k not in ("gpus", "threads")} | {"epochs": 10, "patience": 10}
    train.train_from_shards(tmp_path / "shards", tmp_path / "model", tree, train.TrainConfig(seed=11, **settings), threads=config["train"]["threads"])
    predictions, *_ = predict.predict_shards(tmp_path / "model", tmp_path / "shards", "test", predict.PredictConfig(n_samples=3))
    metrics = evaluate.evaluate_predictions(
        predictions, pd.read_parquet(tmp_path / "shards/test_catalog.parquet"), pd.read_parquet(tmp_path / "shards/train_catalog.parquet"), tree
    ).set_index("question")
    headline = evaluate.summary(metrics.reset_index())
    return metrics.loc["smooth-or-featured"].to_dict(), float(headline["vote_fraction_mae_vote_weighted"]["ratio"])


def test_default_training_beats_the_constant_predictor(tmp_path):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:  # TensorFlow's first call is this training's
        first, ratio = fresh.submit(_train_and_evaluate, str(tmp_path)).result()
    assert first["n_galaxies"] >= 60
    assert first["model_accuracy"] >= first["constant_accuracy"] + 0.2
    assert first["model_mae"] <= 0.75 * first["constant_mae"]
    # over every question the model is better too, though at this budget (720 galaxies, 10 CPU
    # epochs) the deeper questions are close to constant: the margin is in the first question
    assert ratio < 1.0

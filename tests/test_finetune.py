"""Finetuning: a new head on a frozen base, optional unfreezing, scored beside a pixel baseline."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from zoobot_core.catalog import CatalogConfig
from zoobot_core.finetune import FinetuneConfig, _unfreeze_last_blocks, build_finetune_model, finetune_files, pixel_baseline
from zoobot_core.model import get_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """An (untrained) pipeline model at 64 px, colour, saved as a .keras file."""
    path = tmp_path_factory.mktemp("base") / "model.keras"
    get_model(34, 64, 48, 48, 3, seed=0, batchnorm_momentum=0.9).save(path)
    return path


@pytest.mark.parametrize("task, units", [("binary", 1), ("multiclass", 3), ("regression", 1)])
def test_new_head_on_a_frozen_base(base_model, task, units):
    trained = keras.models.load_model(base_model)
    model = build_finetune_model(trained, FinetuneConfig(task=task, n_classes=3), train_features=np.random.default_rng(0).random((10, 1280)))
    assert model.output_shape == (None, units)
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]  # only the new Dense head learns
    unfrozen = _unfreeze_last_blocks(model, 1)
    assert unfrozen == ["block7a", "top"]
    names = {w.path.split("/")[-2] for w in model.trainable_weights}
    assert any(n.startswith("block7a") for n in names) and not any(n.startswith("block6") for n in names)
    assert not any("_bn" in n for n in names)  # BatchNormalization stays frozen


def test_pixel_baseline_learns_an_easy_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    features = rng.normal(0, 1, (200, 20)) + labels[:, None] * 1.5
    predicted = pixel_baseline(features, labels, np.arange(150), np.arange(150, 200), "binary")
    assert (predicted == labels[150:]).mean() > 0.9


def test_finetune_end_to_end_with_quarantine(base_model, tiny_synthetic, tmp_path):
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    votes = catalog[["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk"]].fillna(0)
    catalog = catalog.assign(galaxy_id=catalog["id_str"], path=catalog["file_loc"], smooth=(votes.iloc[:, 0] > votes.iloc[:, 1]).astype(int))
    catalog[["galaxy_id", "path", "smooth"]].to_csv(tmp_path / "labels.csv", index=False)
    for image in (tiny_synthetic / "images").iterdir():
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / image.name).write_bytes(image.read_bytes())
    config = CatalogConfig(id_column="galaxy_id", file_column="path", label_cols=("smooth",), label_kind="values", allow_unlabelled=False, max_quarantine_fraction=0.1)
    settings = FinetuneConfig(epochs=2, batch_size=8, unfreeze_blocks=1, unfreeze_epochs=1)
    metrics = finetune_files(base_model, tmp_path / "labels.csv", config, "smooth", tmp_path / "out", settings, threads=2)
    out = tmp_path / "out"
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert len(quarantine) == 4 and set(quarantine["reason"]) >= {"missing_file", "unreadable_image"}  # the 4 broken synthetic rows
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == 56 and set(predictions["split"]) == {"train", "val", "test"} and set(predictions["prediction"]) <= {0, 1}
    assert metrics["n"]["test"] == (predictions["split"] == "test").sum() and metrics["unfrozen_blocks"] == ["block7a", "top"]
    for scorer in ("finetuned", "pixel_baseline", "constant"):
        assert 0 <= metrics["test"][scorer]["accuracy"] <= 1
    assert json.loads((out / "metrics.json").read_text()) == metrics
    history = pd.read_csv(out / "history.csv")
    assert history["stage"].tolist()[:1] == ["head"] and history["stage"].iloc[-1] == "unfrozen"
    assert keras.models.load_model(out / "model.keras").output_shape == (None, 1)

"""Finetuning's image sources (image_source): a shard source's training epochs mix its shards in a new order each
epoch, rows read again and again are kept once in a local file (HeldImages), scoring builds its feature extractor
once, and no rows give an empty array."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoobot_core import image_source
from zoobot_core.catalog import CatalogConfig, validate_catalog
from zoobot_core.chunk_shards import gather_chunk_files, write_chunk_shards
from zoobot_core.image_source import ArrayImages, HeldImages, ShardImages, gather_rows, held
from zoobot_core.images import ResizeConfig
from zoobot_core.shards import ShardSettings

SIZE = 16


@pytest.fixture(scope="module")
def shard_source(tiny_synthetic, tmp_path_factory) -> tuple[ShardImages, np.ndarray]:
    """The tiny catalog in 2 chunks of 4-galaxy shards (about 14 shards); (source, every image in row order)."""
    out = tmp_path_factory.mktemp("image_source")
    validated, quarantine = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(chunk_size=30, max_quarantine_fraction=1.0))
    validated.to_parquet(out / "validated.parquet")
    quarantine.to_parquet(out / "quarantine_validation.parquet")
    dirs = []
    for chunk in sorted(validated["chunk"].unique()):
        dirs.append(str(out / "shards" / f"chunk_{chunk}"))
        write_chunk_shards(validated, chunk, dirs[-1], ShardSettings(size=SIZE, shard_size=4, image_encoding="raw"), ResizeConfig(size=SIZE))
    gather_chunk_files(out / "validated.parquet", out / "quarantine_validation.parquet", dirs, out / "ready.parquet", out / "q.parquet", out / "a.json", 0.2)
    ready = pd.read_parquet(out / "ready.parquet")
    source = ShardImages(ready, out / "shards")
    everything = np.zeros((len(ready), SIZE, SIZE, 3), np.float32)
    for rows, images in source.batches(None, 7):
        everything[rows] = images
    return source, everything


def _epoch_orders(source: ShardImages, rows: np.ndarray, epochs: int, seed: int) -> list[list[int]]:
    """The rows (by their label: each galaxy's label is its row) in the order each epoch's batches bring them."""
    labels = np.arange(len(source), dtype=np.float64)
    ds = source.training_dataset(rows, labels, np.ones(len(rows), np.float32), channels=3, batch_size=5, seed=seed)
    return [[int(y) for _, batch, _ in ds for y in batch.numpy()] for _ in range(epochs)]


def test_training_epochs_read_the_shards_interleaved_in_a_new_order_each_epoch(shard_source, monkeypatch):
    source, _ = shard_source
    monkeypatch.setattr(image_source, "SHUFFLE_BYTES", 1)  # a one-image buffer: the order is the shards' reading order alone
    rows = np.arange(len(source))
    first, second, third = _epoch_orders(source, rows, 3, seed=3)
    assert sorted(first) == sorted(second) == list(range(len(source)))  # every galaxy once an epoch
    assert first != second != third  # the shards' order is reshuffled each epoch
    shard_of = source.shards
    # a batch's galaxies come from several shards at once (INTERLEAVE_FILES), not one shard after another
    assert len({shard_of[r] for r in first[:8]}) == 8
    assert _epoch_orders(source, rows, 2, seed=3) == [first, second]  # seeded: a rerun repeats the orders


def test_held_rows_read_back_as_the_shards_hold_them_and_the_file_goes_away(shard_source):
    source, everything = shard_source
    rows = np.array([33, 2, 17, 40, 5, 29])
    with held(source, rows) as kept:
        assert isinstance(kept, HeldImages) and len(kept) == len(rows) and kept.size == SIZE
        path = kept.path
        assert path.stat().st_size == len(rows) * SIZE * SIZE * 3  # uint8 pixels, nothing else
        got = {int(r): image for picked, images in kept.batches(None, 4) for r, image in zip(picked, images)}
        assert sorted(got) == sorted(rows.tolist())
        for r, image in got.items():
            np.testing.assert_array_equal(image, everything[r])
        means = lambda images: images.reshape(len(images), -1).mean(axis=1)  # noqa: E731
        subset = np.array([40, 2, 29])  # a subset, in any order: gather_rows puts it back in that order
        np.testing.assert_array_equal(gather_rows(kept, subset, 2, means), means(everything[subset]))
        with pytest.raises(KeyError, match=r"Rows \[1\] were not kept"):
            list(kept.batches(np.array([1]), 4))
    assert not Path(path).exists() and not Path(path).parent.exists()
    array = ArrayImages(everything)
    with held(array, rows) as same:
        assert same is array  # already in memory: nothing copied


def test_no_rows_give_an_empty_array_of_the_asked_shape(shard_source):
    source, _ = shard_source
    assert gather_rows(source, np.array([], np.int64), 4, lambda x: x.mean(axis=(1, 2)), empty=(3,)).shape == (0, 3)
    assert gather_rows(source, [], 4, lambda x: x.mean(axis=(1, 2, 3))).shape == (0,)


def test_scoring_a_source_builds_its_feature_extractor_once_and_scores_as_the_whole_stack(shard_source, monkeypatch):
    from zoobot_core import finetune, finetuned
    from zoobot_core.bases import resolve_base
    from zoobot_core.finetune import FinetuneConfig, _network

    source, everything = shard_source
    network = _network(resolve_base("none"), SIZE, 3, FinetuneConfig(resize_size=32))
    built = []

    def counting(model):
        built.append(model)
        return finetuned.feature_extractor(model)

    monkeypatch.setattr(finetune, "feature_extractor", counting)
    rows = np.arange(0, len(source), 3)
    scores = finetune.source_scores(network, source, rows, 3, "binary", batch_size=4)
    assert len(built) == 1  # not once per batch (each build traces the network again: ~20x slower)
    expected = finetuned.model_scores(network, everything[rows], 3, "binary", batch_size=4)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert finetune.source_scores(network, source, rows[:0], 3, "binary", 4).shape == (0,)

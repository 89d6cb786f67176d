"""A finetuning catalog's one image path (chunk_shards): chunks of shards written straight from the catalog's files,
gathered with their quarantine, stale chunks refused, orphans removed, and the images read back a batch at a time
(image_source) exactly as the pipeline's resize makes them."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoobot_core.catalog import CatalogConfig, chunk_count, validate_catalog
from zoobot_core.chunk_shards import RECORD, SHARD, gather_chunk_files, write_chunk_shards
from zoobot_core.image_source import ArrayImages, ShardImages, gather_rows
from zoobot_core.images import ResizeConfig, load_resized
from zoobot_core.shards import ShardSettings

SIZE = 24


def _chunked(tiny_synthetic, tmp_path, encoding="raw", chunk_size=20):
    """The tiny catalog validated into chunks, each written as shards; (validated, chunk dirs, ready, quarantine)."""
    validated, quarantine = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(chunk_size=chunk_size, max_quarantine_fraction=1.0))
    validated.to_parquet(tmp_path / "validated.parquet")
    quarantine.to_parquet(tmp_path / "quarantine_validation.parquet")
    dirs = []
    for chunk in sorted(validated["chunk"].unique()):
        folder = tmp_path / "shards" / f"chunk_{chunk}"
        write_chunk_shards(validated, chunk, folder, ShardSettings(size=SIZE, shard_size=8, image_encoding=encoding), ResizeConfig(size=SIZE), workers=2)
        dirs.append(str(folder))
    gather_chunk_files(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", dirs, tmp_path / "ready.parquet",
                       tmp_path / "quarantine.parquet", tmp_path / "accounting.json", 0.2)
    return validated, dirs, pd.read_parquet(tmp_path / "ready.parquet"), pd.read_parquet(tmp_path / "quarantine.parquet")


@pytest.mark.parametrize("encoding", ["raw", "encoded"])
def test_chunks_hold_every_readable_image_as_the_resize_makes_it_and_quarantine_the_rest(tiny_synthetic, tmp_path, encoding):
    validated, dirs, ready, quarantine = _chunked(tiny_synthetic, tmp_path, encoding)
    assert len(dirs) == chunk_count(len(validated), 20) == 4
    broken = quarantine[quarantine["stage"] == "resize"]
    assert len(broken) == 2 and set(broken["reason"]) == {"unreadable_image"}  # a truncated file and a non-image, with the main chain's reason
    assert len(ready) + len(broken) == len(validated) and ready[SHARD].str.match(r"chunk_\d/unlabelled/unlabelled_\d{5}\.tfrecord").all()
    source = ShardImages(ready, tmp_path / "shards")
    assert source.size == SIZE and len(source) == len(ready)
    seen = {}
    for rows, images in source.batches(None, 5):
        assert len(rows) <= 5 and images.shape[1:] == (SIZE, SIZE, 3)
        seen.update(zip(rows.tolist(), images))
    assert sorted(seen) == list(range(len(ready)))  # every galaxy once
    for row in (0, 17, len(ready) - 1):
        expected = np.asarray(load_resized(ready.loc[row, "file_loc"], ResizeConfig(size=SIZE)), np.float32)
        np.testing.assert_array_equal(seen[row], expected)


def test_a_subset_comes_back_in_any_order_asked_and_training_batches_carry_its_labels(tiny_synthetic, tmp_path):
    _, _, ready, _ = _chunked(tiny_synthetic, tmp_path)
    source = ShardImages(ready, tmp_path / "shards")
    everything = np.zeros((len(ready), SIZE, SIZE, 3), np.float32)
    for rows, images in source.batches(None, 16):
        everything[rows] = images
    array = ArrayImages(everything)
    rows = np.array([40, 3, 22, 9, 31])
    means = lambda images: images.reshape(len(images), -1).mean(axis=1)  # noqa: E731
    np.testing.assert_array_equal(gather_rows(source, rows, 2, means), gather_rows(array, rows, 2, means))
    labels = np.arange(len(ready), dtype=np.float64)  # each galaxy's label is its row: a batch's labels say which images came
    weights = np.full(len(rows), 2.0, np.float32)
    got = []
    for x, y, w in source.training_dataset(rows, labels, weights, channels=3, batch_size=2, seed=0):
        for image, label in zip(x.numpy(), y.numpy()):
            np.testing.assert_allclose(image, everything[int(label)] / 255.0, atol=1e-6)
            got.append(int(label))
        assert (w.numpy() == 2.0).all()
    assert sorted(got) == sorted(rows.tolist())


def test_a_stale_chunk_is_refused_and_orphaned_chunks_are_removed(tiny_synthetic, tmp_path):
    validated, dirs, _, _ = _chunked(tiny_synthetic, tmp_path)
    edited = validated[validated["id_str"] != validated.loc[validated["chunk"] == 1, "id_str"].iloc[0]]
    edited.to_parquet(tmp_path / "validated.parquet")
    args = (tmp_path / "quarantine_validation.parquet", dirs, tmp_path / "r.parquet", tmp_path / "q.parquet", tmp_path / "a.json", 0.2)
    with pytest.raises(RuntimeError, match=r"chunk\(s\) 1 do not hold .*snakemake --force .*chunk_1 \(snakemake -R write_finetune_shards"):
        gather_chunk_files(tmp_path / "validated.parquet", *args)
    # the catalog now has 2 chunks: chunks 2 and 3 are orphans once chunks 0 and 1 are gathered
    halved, _ = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(chunk_size=20, max_chunks=2, max_quarantine_fraction=1.0))
    assert sorted(halved["chunk"].unique()) == [0, 1]
    halved.to_parquet(tmp_path / "validated.parquet")
    for chunk in (0, 1):
        write_chunk_shards(halved, chunk, tmp_path / "shards" / f"chunk_{chunk}.new", ShardSettings(size=SIZE, shard_size=8), ResizeConfig(size=SIZE))
    for chunk in (0, 1):
        shutil.rmtree(tmp_path / "shards" / f"chunk_{chunk}")
        (tmp_path / "shards" / f"chunk_{chunk}.new").rename(tmp_path / "shards" / f"chunk_{chunk}")
    gather_chunk_files(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", dirs[:2], *args[2:])
    assert sorted(p.name for p in (tmp_path / "shards").iterdir() if p.is_dir() and not p.name.startswith(".")) == ["chunk_0", "chunk_1"]
    assert list(json.loads((tmp_path / "shards/shards.json").read_text())["chunks"]) == ["chunk_0", "chunk_1"]  # what readers take
    ready = pd.read_parquet(tmp_path / "r.parquet")
    assert len(ready) == len(halved) - 2 and (ready[RECORD] >= 0).all()


def test_gathering_removes_what_the_design_before_chunks_left(tiny_synthetic, tmp_path):
    """A run upgraded from the designs before chunks of shards: the old shard folder's split folders (shards/train,
    shards/unlabelled...) and the resized PNG chunks (images/chunk_k) are removed, its manifest and shards.json are
    the chunks' together now; the chunks and anything else stay."""
    validated, dirs, _, _ = _chunked(tiny_synthetic, tmp_path)
    shards = tmp_path / "shards"
    for split in ("train", "unlabelled"):
        (shards / split).mkdir()
        (shards / split / f"{split}_00000.tfrecord").write_bytes(b"old")
    (shards / "manifest.parquet").write_bytes(b"old")
    for chunk in (0, 5):
        (tmp_path / "images" / f"chunk_{chunk}").mkdir(parents=True)
        (tmp_path / "images" / f"chunk_{chunk}" / "a.png").write_bytes(b"old")
    (shards / "notes.txt").write_text("a user's file")
    gather_chunk_files(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", dirs, tmp_path / "r.parquet",
                       tmp_path / "q.parquet", tmp_path / "a.json", 0.2)
    assert not (shards / "train").exists() and not (shards / "unlabelled").exists() and not (tmp_path / "images").exists()
    assert (shards / "notes.txt").exists() and all(Path(d).is_dir() for d in dirs)
    assert len(pd.read_parquet(shards / "manifest.parquet")) == len(pd.read_parquet(tmp_path / "r.parquet"))


def test_the_chunk_count_stops_growing_at_max_chunks():
    assert [chunk_count(n, 500) for n in (100, 800, 3000, 300_000)] == [1, 2, 8, 512]
    assert [chunk_count(n, 500, 16) for n in (100, 800, 3000, 300_000, 3_000_000)] == [1, 2, 8, 16, 16]
    for bad in (0, 3, 12):  # chunk counts are powers of two: a cap that is not one would break that
        with pytest.raises(ValueError, match="max_chunks must be a power of two"):
            chunk_count(10, 5, bad)


def test_the_schema_takes_only_a_power_of_two_for_max_chunks():
    import yaml
    from conftest import REPO
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for good in (1, 16, 64):
        config["images"]["max_chunks"] = good
        validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    config["images"]["max_chunks"] = 12
    with pytest.raises(Exception, match="12"):
        validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))


def test_a_catalog_with_no_usable_row_is_refused_naming_the_reasons(tmp_path):
    from zoobot_core.catalog import CatalogError, validate_catalog_file

    (tmp_path / "catalog.csv").write_text("id_str,file_loc\na,missing_a.png\nb,missing_b.png\n")
    validated, quarantine = validate_catalog(tmp_path / "catalog.csv", CatalogConfig(max_quarantine_fraction=1.0))  # the library: both tables
    assert validated.empty and len(quarantine) == 2
    with pytest.raises(CatalogError, match=r"No row of .* is usable: all 2 are quarantined .*missing_file.*row 0 \(a\)"):  # the rule: stops, saying why
        validate_catalog_file(tmp_path / "catalog.csv", tmp_path / "v.parquet", tmp_path / "q.parquet", CatalogConfig(max_quarantine_fraction=1.0))
    assert not (tmp_path / "v.parquet").exists()


@pytest.mark.slow
def test_finetuning_from_shards_scores_the_real_rings_exactly_as_from_images_in_memory(real_sample, tmp_path):
    """Cross-validation reading the 104 rings from their chunk shards a batch at a time gives the same folds, the
    same out-of-fold scores of every method and the same metrics as from the whole stack in memory."""
    from zoobot_core.bases import resolve_base
    from zoobot_core.finetune import FinetuneConfig, cross_validate

    config = CatalogConfig(id_column="iauname", file_column="local_png_loc", label_cols=("ring",), label_kind="classes", allow_unlabelled=False,
                           chunk_size=40)
    validated, _ = validate_catalog(real_sample / "catalog.csv", config)
    dirs = [tmp_path / f"chunk_{c}" for c in sorted(validated["chunk"].unique())]
    for folder in dirs:
        write_chunk_shards(validated, int(folder.name.split("_")[1]), folder, ShardSettings(size=48, shard_size=16), ResizeConfig(size=48), workers=2)
    index = pd.concat([pd.read_parquet(d / "manifest.parquet").assign(**{SHARD: lambda t, d=d: d.name + "/" + t["shard"]}) for d in dirs])
    ready = validated.merge(index[["id_str", SHARD, RECORD]], on="id_str").sort_values("id_str").reset_index(drop=True)
    assert len(dirs) == 2 and len(ready) == 104
    in_memory = np.stack([np.asarray(load_resized(f, ResizeConfig(size=48))) for f in ready["file_loc"]])
    settings = FinetuneConfig(folds=3, inner_folds=3, batch_size=16, temperature_scaling=False)
    base = resolve_base("none")
    ids, labels = ready["id_str"].to_numpy(), ready["ring"].to_numpy()
    streamed, streamed_metrics, _, _ = cross_validate(ShardImages(ready, tmp_path), ids, labels, base, settings)
    whole, whole_metrics, _, _ = cross_validate(in_memory, ids, labels, base, settings)
    pd.testing.assert_frame_equal(streamed, whole)
    assert streamed_metrics == whole_metrics


def test_readers_refuse_a_chunk_written_again_after_the_chunks_were_combined(tiny_synthetic, tmp_path):
    """shard_paths reads the chunks the combined shards.json lists, each checked against the digest it records: a
    chunk written again since (a chunk forced alone, then --touch) is refused, naming it and the command."""
    from zoobot_core.shards import shard_paths

    validated, dirs, _, _ = _chunked(tiny_synthetic, tmp_path)
    root = tmp_path / "shards"
    assert len(shard_paths(root, "unlabelled")) == sum(len(list((Path(d) / "unlabelled").glob("*.tfrecord"))) for d in dirs)
    meta = json.loads((Path(dirs[1]) / "shards.json").read_text())
    (Path(dirs[1]) / "shards.json").write_text(json.dumps({**meta, "rows_digest": "another version"}))
    with pytest.raises(RuntimeError, match=r"chunk\(s\) chunk_1 .* no longer hold what its shards.json lists.*snakemake --force .*shards.json"):
        shard_paths(root, "unlabelled")


def test_a_stale_chunk_is_named_with_the_command_that_rewrites_it_alone(tiny_synthetic, tmp_path):
    validated, dirs, _, _ = _chunked(tiny_synthetic, tmp_path)
    edited = validated[validated["id_str"] != validated.loc[validated["chunk"] == 2, "id_str"].iloc[0]]
    edited.to_parquet(tmp_path / "validated.parquet")
    with pytest.raises(RuntimeError, match=rf"chunk\(s\) 2 do not hold .*snakemake --force {tmp_path / 'shards' / 'chunk_2'} \(snakemake -R"):
        gather_chunk_files(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", dirs, tmp_path / "r.parquet", tmp_path / "q.parquet",
                           tmp_path / "a.json", 0.2)


def test_writing_a_chunk_again_reuses_every_shard_the_edit_did_not_touch(tiny_synthetic, tmp_path, monkeypatch):
    """Shards are hash buckets: a galaxy added to a chunk changes its own shard. Written again (its folder removed
    first, as Snakemake does), the chunk links every other shard from the cache (no image read) and reads the added
    galaxy's shard alone; the bytes equal a write from nothing. A source file touched since, or a shard with an
    unreadable image, is read again; gathering prunes the cache to the shards the chunks hold."""
    from zoobot_core import shard_writer
    from zoobot_core.shard_cache import CACHE_DIR

    validated, _ = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(chunk_size=1000, max_quarantine_fraction=1.0))
    validated = validated.iloc[:50].assign(chunk=0)  # readable images (the broken ones come last)
    (tmp_path / "images").mkdir()
    copies = [shutil.copy(f, tmp_path / "images" / Path(f).name) for f in validated["file_loc"]]  # this test touches one
    validated = validated.assign(file_loc=[str(c) for c in copies])
    settings, resize = ShardSettings(size=SIZE, shard_size=6, image_encoding="raw"), ResizeConfig(size=SIZE)
    root = tmp_path / "shards"
    read: list[str] = []
    real = shard_writer.load_resized
    monkeypatch.setattr(shard_writer, "load_resized", lambda path, config: read.append(path) or real(path, config))

    def write(table):
        read.clear()
        shutil.rmtree(root / "chunk_0", ignore_errors=True)
        manifest = write_chunk_shards(table, 0, root / "chunk_0", settings, resize)
        return manifest, {p.relative_to(root / "chunk_0"): p.read_bytes() for p in sorted((root / "chunk_0").rglob("*.tfrecord"))}

    first, first_bytes = write(validated)
    assert len(read) == 50 and len(first_bytes) >= 6  # every image read once; the split's ~50 galaxies in ~8 buckets
    added = pd.concat([validated, validated.iloc[[3]].assign(id_str="ADDED")], ignore_index=True)
    manifest, again = write(added)
    shard_of_added = manifest.loc[manifest["id_str"] == "ADDED", "shard"].item()
    assert sorted(read) == sorted(added.loc[added["id_str"].isin(manifest.loc[manifest["shard"] == shard_of_added, "id_str"]), "file_loc"])
    assert {str(k) for k in again if again[k] != first_bytes.get(k)} == {shard_of_added}  # the other shards: the same bytes
    fresh = tmp_path / "fresh"
    write_chunk_shards(added, 0, fresh / "chunk_0", settings, resize)  # no cache there: everything read
    assert again == {p.relative_to(fresh / "chunk_0"): p.read_bytes() for p in sorted((fresh / "chunk_0").rglob("*.tfrecord"))}
    pd.testing.assert_frame_equal(manifest, pd.read_parquet(fresh / "chunk_0/manifest.parquet"))
    # a source file rewritten in place (its size and time change): its shard is read again, no other
    touched = added["file_loc"].iloc[10]
    Path(touched).write_bytes(Path(touched).read_bytes())
    os.utime(touched, ns=(1, 1))
    manifest, _ = write(added)
    shard_of_touched = manifest.loc[manifest["id_str"] == added["id_str"].iloc[10], "shard"].item()
    assert set(read) == set(added.loc[added["id_str"].isin(manifest.loc[manifest["shard"] == shard_of_touched, "id_str"]), "file_loc"])
    # gathering keeps the cache entries of the shards the chunk holds, no others
    added.to_parquet(tmp_path / "validated.parquet")
    pd.DataFrame(columns=["row", "id_str", "file_loc", "stage", "reason", "message"]).astype({"row": "int64"}).to_parquet(tmp_path / "q.parquet")
    gather_chunk_files(tmp_path / "validated.parquet", tmp_path / "q.parquet", [str(root / "chunk_0")], tmp_path / "r.parquet", tmp_path / "qq.parquet",
                       tmp_path / "a.json", 1.0)
    keys = set(json.loads((root / "chunk_0/shards.json").read_text())["shard_keys"].values())
    assert {p.stem for p in (root / CACHE_DIR).glob("*.json")} == keys and len(keys) == len(again)

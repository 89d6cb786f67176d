import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_core.datasets import get_dataset
from zoobot_core.images import RESIZED
from zoobot_core.schemas import get_tree
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import MANIFEST, ShardSettings, read_catalog, read_metadata, shard_paths
from zoobot_core.splits import assign_splits


def _catalog_in_chunks(validated_path: Path, quarantine_path: Path, root: Path, settings: ShardSettings, max_quarantine_fraction: float,
                       hash_images: bool = True) -> dict:
    """The main chain's image path: each chunk of a validated catalog written as write_shards' job does (validation's
    quarantine checked first), then gathered as gather_images does; the row accounting. ready.parquet,
    quarantine.parquet and accounting.json go beside `root`."""
    from zoobot_core.chunk_shards import gather_chunk_files, write_chunk_shards_file
    from zoobot_core.images import ResizeConfig

    dirs = []
    for chunk in sorted(pd.read_parquet(validated_path, columns=["chunk"])["chunk"].unique()):
        dirs.append(str(root / f"chunk_{chunk}"))
        write_chunk_shards_file(validated_path, int(chunk), dirs[-1], settings, ResizeConfig(size=settings.size), hash_images=hash_images,
                                validation_quarantine_path=quarantine_path, max_quarantine_fraction=max_quarantine_fraction)
    return gather_chunk_files(validated_path, quarantine_path, dirs, root.parent / "ready.parquet", root.parent / "quarantine.parquet",
                              root.parent / "accounting.json", max_quarantine_fraction, settings.label_cols, "write_shards")


def test_split_depends_on_id_and_seed_only():
    ids = pd.Series([f"gal{i}" for i in range(2000)])
    a = assign_splits(ids, seed=1, train_fraction=0.8, val_fraction=0.1)
    b = assign_splits(ids[::-1].reset_index(drop=True), seed=1, train_fraction=0.8, val_fraction=0.1)
    assert dict(zip(ids, a)) == dict(zip(ids[::-1], b))
    assert a.value_counts(normalize=True)["train"] == pytest.approx(0.8, abs=0.03)
    assert a.value_counts(normalize=True)["test"] == pytest.approx(0.1, abs=0.02)
    c = assign_splits(ids, seed=2, train_fraction=0.8, val_fraction=0.1)
    assert (a != c).mean() > 0.2
    more = assign_splits(pd.Series([*ids, "newcomer"]), seed=1, train_fraction=0.8, val_fraction=0.1)
    assert (more.iloc[:-1].to_numpy() == a.to_numpy()).all()  # adding a galaxy moves no other


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="train"):
        assign_splits(pd.Series(["a"]), 0, 0.9, 0.2)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


_REWRITE = """
import sys, pandas as pd
from zoobot_core.schemas import get_tree
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import ShardSettings
ready = pd.read_parquet(sys.argv[1])
settings = ShardSettings(size=32, label_cols=tuple(get_tree("gz_decals_dr5").label_cols), shard_size=16, train_fraction=0.6, val_fraction=0.2)
write_shards(ready, sys.argv[2], settings, workers=2)
"""


def test_same_catalog_gives_byte_identical_shards_in_another_process_with_two_workers(tiny_shards, tmp_path):
    ready = read_catalog(tiny_shards)
    ready.sample(frac=1, random_state=3).to_parquet(tmp_path / "shuffled_rows.parquet")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", _REWRITE, str(tmp_path / "shuffled_rows.parquet"), str(tmp_path / "again")], check=True, env=env, capture_output=True)
    originals = sorted(p.relative_to(tiny_shards) for p in tiny_shards.rglob("*.tfrecord"))
    assert originals == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.tfrecord"))
    for rel in originals:
        assert _sha(tiny_shards / rel) == _sha(tmp_path / "again" / rel)
    assert (tiny_shards / "shards.json").read_bytes() == (tmp_path / "again" / "shards.json").read_bytes()


def test_manifest_lists_every_galaxy_once_with_its_shard_checksum(tiny_shards):
    manifest = pd.read_parquet(tiny_shards / MANIFEST)
    counts = read_metadata(tiny_shards)["counts"]
    assert manifest["id_str"].is_unique
    assert manifest["split"].value_counts().to_dict() == {k: v for k, v in counts.items() if v}
    assert counts["unlabelled"] > 0 and counts["train"] > counts["val"] > 0
    from zoobot_core.shard_plan import shard_count
    from zoobot_core.splits import hash_fraction

    seed = read_metadata(tiny_shards)["seed"]
    for shard, group in manifest.groupby("shard"):
        # a shard is a hash bucket of its split: [k/n, (k+1)/n) of hash_fraction(id, seed + 1), n = shard_count (about 16 a shard)
        n = shard_count(counts[shard.split("/")[0]], 16)
        bucket = int(shard.split("_")[-1].split(".")[0])
        assert all(int(hash_fraction(i, seed + 1) * n) == bucket for i in group["id_str"])
        assert group["shard_sha256"].nunique() == 1
        assert group["shard_sha256"].iloc[0] == _sha(tiny_shards / shard)
        assert group["index_in_shard"].tolist() == list(range(len(group)))


def test_reading_shards_returns_the_images_and_labels_written(tiny_shards):
    tree = get_tree("gz_decals_dr5")
    catalog = pd.read_parquet(tiny_shards / "train_catalog.parquet").set_index("id_str")
    ds = get_dataset(shard_paths(tiny_shards, "train"), tree.label_cols, batch_size=8, shuffle=False, requested_img_size=32)
    seen = []
    for batch in ds:
        for i, id_bytes in enumerate(batch["id_str"].numpy()):
            id_str = id_bytes.decode()
            seen.append(id_str)
            expected = np.asarray(Image.open(catalog.loc[id_str, RESIZED]).convert("RGB"), dtype=np.float32)
            np.testing.assert_array_equal(batch["matrix"][i].numpy(), expected)
            assert batch[tree.label_cols[0]][i].numpy() == catalog.loc[id_str, tree.label_cols[0]]
    manifest = pd.read_parquet(tiny_shards / MANIFEST)
    assert seen == manifest.loc[manifest["split"] == "train", "id_str"].tolist()


def test_shuffled_reading_is_repeatable_for_a_seed(tiny_shards):
    def order(seed):
        ds = get_dataset(shard_paths(tiny_shards, "train"), [], batch_size=4, shuffle=True, seed=seed, requested_img_size=32)
        return [i.decode() for batch in ds for i in batch["id_str"].numpy()]

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert sorted(order(5)) == sorted(order(6))


@pytest.mark.parametrize("seed", [0, 7])  # 0: TensorFlow's seed handling once failed on a global seed of 0
def test_training_epochs_depend_on_seed_and_epoch_only(tiny_shards, seed):
    """A run resumed at epoch 2 reads epochs 2-3 exactly as an uninterrupted run does; every epoch is a new order of all galaxies."""
    import tensorflow as tf

    from zoobot_core.datasets import get_training_dataset

    tf.random.set_seed(seed)  # as configure_tensorflow does

    def stream(first: int) -> list[list[str]]:
        ds = get_training_dataset(shard_paths(tiny_shards, "train"), [], 4, first, 4, seed, requested_img_size=32)
        return [[i.decode() for i in batch["id_str"].numpy()] for batch in ds]

    full, resumed = stream(0), stream(2)
    per_epoch = len(full) // 4
    assert resumed == full[2 * per_epoch :]
    epochs = [sum(full[e * per_epoch : (e + 1) * per_epoch], []) for e in range(4)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs) and len({tuple(e) for e in epochs}) == 4


def test_raw_pixel_shards_read_back_the_same_images_and_labels(tiny_shards, tmp_path):
    from zoobot_core.shards import image_encoding

    tree = get_tree("gz_decals_dr5")
    ready = read_catalog(tiny_shards)
    settings = ShardSettings(size=32, label_cols=tuple(tree.label_cols), shard_size=16, train_fraction=0.6, val_fraction=0.2, image_encoding="raw")
    raw_manifest = write_shards(ready, tmp_path / "raw", settings)
    write_shards(ready, tmp_path / "raw_two_workers", settings, workers=2)  # decoding in two processes
    for path in (tmp_path / "raw").rglob("*.tfrecord"):
        assert _sha(path) == _sha(tmp_path / "raw_two_workers" / path.relative_to(tmp_path / "raw"))
    assert image_encoding(tmp_path / "raw") == "raw" and image_encoding(tiny_shards) == "encoded"
    assert raw_manifest[["id_str", "split", "shard"]].equals(pd.read_parquet(tiny_shards / MANIFEST)[["id_str", "split", "shard"]])
    raw_size = sum(p.stat().st_size for p in (tmp_path / "raw").rglob("*.tfrecord"))
    assert raw_size > 16 * 32 * 32 * 3  # pixels, uncompressed
    encoded = get_dataset(shard_paths(tiny_shards, "train"), tree.label_cols, batch_size=64, requested_img_size=32)
    raw = get_dataset(shard_paths(tmp_path / "raw", "train"), tree.label_cols, batch_size=64, requested_img_size=32, image_encoding="raw")
    a, b = next(iter(encoded)), next(iter(raw))
    np.testing.assert_array_equal(a["matrix"].numpy(), b["matrix"].numpy())
    np.testing.assert_array_equal(a["id_str"].numpy(), b["id_str"].numpy())
    np.testing.assert_array_equal(a[tree.label_cols[0]].numpy(), b[tree.label_cols[0]].numpy())


def test_raw_shards_need_a_size_and_a_known_encoding(tiny_shards):
    with pytest.raises(ValueError, match="requested_img_size"):
        get_dataset(shard_paths(tiny_shards, "train"), [], image_encoding="raw")
    with pytest.raises(ValueError, match="image_encoding"):
        get_dataset(shard_paths(tiny_shards, "train"), [], image_encoding="jpeg2000")


def test_the_workflow_resizes_catalog_images_straight_into_shards_and_lists_unreadable_ones(tiny_synthetic, tmp_path):
    """write_shards(resize=...): one pass from the catalog's files; the same bytes with 1 or 2 workers; raw
    pixels are exactly images.load_rgb's; PNG-encoded shards decode to the same pixels; an unreadable image is
    listed with its reason and gather_images quarantines it, so every row is accounted for."""
    from zoobot_core.catalog import CatalogConfig, validate_catalog
    from zoobot_core.images import ResizeConfig, load_rgb
    from zoobot_core.shards import UNREADABLE

    tree = get_tree("gz_decals_dr5")
    validated, quarantine = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(label_cols=tuple(tree.label_cols), max_quarantine_fraction=0.2))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    original = validated.loc[0, "file_loc"]
    validated.loc[0, "file_loc"] = str(broken)
    validated.to_parquet(tmp_path / "validated.parquet")
    quarantine.to_parquet(tmp_path / "quarantine_validation.parquet")
    settings = ShardSettings(size=32, label_cols=tuple(tree.label_cols), shard_size=8, train_fraction=0.6, val_fraction=0.2, image_encoding="raw")
    resize = ResizeConfig(size=32)
    manifest = write_shards(validated, tmp_path / "one", settings, source_col="file_loc", resize=resize)
    write_shards(validated, tmp_path / "two", settings, workers=2, source_col="file_loc", resize=resize)
    for path in (tmp_path / "one").rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes(), path
    unreadable = pd.read_parquet(tmp_path / "one" / UNREADABLE)
    # ours, and the synthetic catalog's own deliberately truncated and corrupt files
    assert validated.loc[0, "id_str"] in set(unreadable["id_str"]) and len(unreadable) == 3
    assert set(unreadable["reason"]) == {"unreadable_image"} and unreadable["message"].str.len().gt(0).all()
    assert len(manifest) == len(validated) - 3 and not set(unreadable["id_str"]) & set(manifest["id_str"])
    # each shard's galaxies are fixed before any image is read: the unreadable one leaves its own shard a record short
    fixed = write_shards(validated.assign(file_loc=validated["file_loc"].where(validated.index != 0, original)), tmp_path / "fixed", settings,
                         source_col="file_loc", resize=resize)
    assert dict(zip(manifest["id_str"], manifest["shard"])) == {i: s for i, s in zip(fixed["id_str"], fixed["shard"]) if i != validated.loc[0, "id_str"]}
    shard_of_broken = fixed.loc[fixed["id_str"] == validated.loc[0, "id_str"], "shard"].item()
    assert (manifest["shard"] == shard_of_broken).sum() == (fixed["shard"] == shard_of_broken).sum() - 1
    batch = next(iter(get_dataset(shard_paths(tmp_path / "one", "train"), tree.label_cols, batch_size=4, requested_img_size=32, image_encoding="raw")))
    files = dict(zip(validated["id_str"], validated["file_loc"]))
    for id_str, pixels in zip(batch["id_str"].numpy(), batch["matrix"].numpy()):
        np.testing.assert_array_equal(pixels, np.asarray(load_rgb(files[id_str.decode()], 32), dtype=np.float32))
    png = ShardSettings(**{**settings.__dict__, "image_encoding": "encoded"})
    write_shards(validated, tmp_path / "png", png, workers=2, source_col="file_loc", resize=resize)
    encoded = next(iter(get_dataset(shard_paths(tmp_path / "png", "train"), tree.label_cols, batch_size=4, requested_img_size=32)))
    np.testing.assert_array_equal(encoded["matrix"].numpy(), batch["matrix"].numpy())
    # gather_images: in chunks, each a hash bucket of the ids, the same galaxies in the same splits, the unreadable quarantined
    counts = _catalog_in_chunks(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", tmp_path / "chunked", settings, 0.2)
    assert counts["n_in"] == len(validated) + len(quarantine) == counts["n_ok"] + counts["n_quarantined"]
    assert counts["quarantined_by_reason"]["unreadable_image"] == 3
    ready = pd.read_parquet(tmp_path / "ready.parquet")
    assert sorted(ready["id_str"]) == sorted(manifest["id_str"])
    assert dict(zip(ready["id_str"], ready["shard_split"])) == dict(zip(manifest["id_str"], manifest["split"]))
    combined = pd.read_parquet(tmp_path / "chunked" / MANIFEST)
    assert dict(zip(combined["id_str"], combined["split"])) == dict(zip(manifest["id_str"], manifest["split"]))
    assert dict(zip(ready["id_str"], ready["shard"])) == dict(zip(combined["id_str"], combined["shard"]))
    assert read_metadata(tmp_path / "chunked")["counts"] == read_metadata(tmp_path / "one")["counts"]
    for split in ("train", "val", "test"):  # the chunks' shards, read as one folder, hold the split's galaxies
        read = [i.decode() for b in get_dataset(shard_paths(tmp_path / "chunked", split), [], 64, requested_img_size=32, image_encoding="raw")
                for i in b["id_str"].numpy()]
        assert sorted(read) == sorted(manifest.loc[manifest["split"] == split, "id_str"])


def test_shards_are_cut_into_parts_only_when_too_few_to_keep_the_workers_busy():
    from zoobot_core.shard_plan import estimated_finish, part_bounds, parts_per_shard

    assert parts_per_shard([4096] * 5 + [3372, 3022, 2934], workers=2) == [1] * 8  # 30,000 galaxies: each shard whole
    assert parts_per_shard([4096] * 60, workers=16) == [1] * 60
    assert parts_per_shard([2400, 300, 300], workers=2) == [2, 1, 1]  # 3,000: the one train shard in two halves
    assert parts_per_shard([2400, 300, 300], workers=1) == [1, 1, 1]
    # 3,000 in the workflow's 512-galaxy shards: whole shards leave one worker 1,643 galaxies against 1,357; cutting
    # one of the small ones evens them out for a small join
    sizes = [512] * 4 + [333, 311, 308]
    assert estimated_finish(sizes, [1] * 7, workers=2) == 1643
    assert parts_per_shard(sizes, workers=2) == [1, 1, 1, 1, 2, 1, 1]
    assert estimated_finish(sizes, parts_per_shard(sizes, workers=2), workers=2) < 1550
    assert parts_per_shard([100, 10], workers=8) == [1, 1]  # parts under 64 galaxies are not worth joining
    assert parts_per_shard([], workers=2) == []
    assert [b - a for a, b in part_bounds(300, 16)] == [75] * 4 and part_bounds(100, 16) == [(0, 100)]  # no part under 64 galaxies


def test_shards_written_in_parts_by_two_workers_are_the_bytes_of_one_process(tiny_synthetic, tmp_path, monkeypatch):
    """Too few shards for the workers: each is written in parts by different processes and joined, into the same
    bytes, the same manifest and checksums, and no part file is left behind."""
    from zoobot_core import shard_writer
    from zoobot_core.catalog import CatalogConfig, validate_catalog
    from zoobot_core.images import ResizeConfig

    join = shard_writer._join_parts
    tree = get_tree("gz_decals_dr5")
    validated, _ = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(label_cols=tuple(tree.label_cols), max_quarantine_fraction=0.2))
    catalog = pd.concat([validated.assign(id_str=validated["id_str"] + f"_{k}") for k in range(8)], ignore_index=True)  # each image 8 times
    settings = ShardSettings(size=16, label_cols=tuple(tree.label_cols), shard_size=4096, train_fraction=0.8, val_fraction=0.1, image_encoding="raw")
    resize = ResizeConfig(size=16)
    joins = []
    monkeypatch.setattr(shard_writer, "_join_parts", lambda root, shard, n_parts: joins.append((shard, n_parts)) or join(root, shard, n_parts))
    one = write_shards(catalog, tmp_path / "one", settings, source_col="file_loc", resize=resize)
    assert not joins
    two = write_shards(catalog, tmp_path / "two", settings, workers=2, source_col="file_loc", resize=resize)
    assert ("train/train_00000.tfrecord", 2) in joins  # the one big train shard, written in two parts and joined
    pd.testing.assert_frame_equal(one, two)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert not [f for f in files if ".part" in f.name]
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    for shard, checksum in zip(two["shard"], two["shard_sha256"]):
        assert checksum == _sha(tmp_path / "two" / shard)
    unreadable = pd.read_parquet(tmp_path / "two" / "unreadable.parquet")
    assert len(two) + len(unreadable) == len(catalog) and len(unreadable) == 8 * 2  # the sample's two broken files, 8 times


def test_the_whole_chain_benchmark_runs_both_sides(tmp_path):
    """tests/benchmarks/bench_chain.py (make bench-chain) at 24 galaxies, so it cannot rot: Zoobot's loop and the
    whole command to the shards (the ready catalog and the combined shards.json) both run and are timed."""
    import json
    from pathlib import Path

    script = Path(__file__).parent / "benchmarks" / "bench_chain.py"
    subprocess.run([sys.executable, str(script), "--n", "24", "--cases", "jpg:32,png:32", "--repeats", "1", "--cores", "2",
                    "--cpu-split", "--against", str(script.parents[2]), "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "chain.json")], check=True, capture_output=True, timeout=600)
    rows = json.loads((tmp_path / "chain.json").read_text())
    assert [(r["input"], r["size"]) for r in rows] == [("jpg", 32), ("png", 32)]
    for row in rows:
        assert row["zoobot_img_s"] > 0 and row["ours_img_s"] > 0 and "write_shards" in row["ours_rules_s"]
        for split in (row["cpu_split"], row["against_cpu_split"]):  # this checkout, and --against's (here the same one)
            assert split["job_img_s"] > 0 and split["writer_cpu_ms"] > 0 and split["workers_cpu_ms"] > 0
        assert row["against_img_s"] > 0


def test_a_catalog_over_the_quarantine_limit_stops_before_any_image_is_read_or_any_shard_appears(tiny_synthetic, tmp_path):
    from zoobot_core.catalog import CatalogConfig, CatalogError, validate_catalog

    tree = get_tree("gz_decals_dr5")
    validated, quarantine = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(label_cols=tuple(tree.label_cols), max_quarantine_fraction=1.0,
                                                                                           chunk_size=20))
    assert len(quarantine)  # the synthetic catalog's missing and empty files
    validated.to_parquet(tmp_path / "validated.parquet")
    quarantine.to_parquet(tmp_path / "quarantine_validation.parquet")
    settings = ShardSettings(size=32, label_cols=tuple(tree.label_cols), image_encoding="raw")
    with pytest.raises(CatalogError, match=r"max_quarantine_fraction.*missing_file"):
        _catalog_in_chunks(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", tmp_path / "shards", settings, 0.0)
    assert not (tmp_path / "shards").exists()  # not one chunk written
    # under the limit after validation, over it with the catalog's unreadable images: gathering stops before the
    # shards' shards.json (what training reads) or the ready catalog appear, so no training can start on them
    just_over_validation = (len(quarantine) + 0.5) / (len(validated) + len(quarantine))
    with pytest.raises(CatalogError, match=r"unreadable_image"):
        _catalog_in_chunks(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", tmp_path / "shards", settings, just_over_validation)
    assert not (tmp_path / "shards" / "shards.json").exists() and not (tmp_path / "ready.parquet").exists()
    _catalog_in_chunks(tmp_path / "validated.parquet", tmp_path / "quarantine_validation.parquet", tmp_path / "shards", settings, 0.5)
    assert read_metadata(tmp_path / "shards")["image_encoding"] == "raw" and len(read_metadata(tmp_path / "shards")["chunks"]) == 4


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreadable_resized_file_stops_raw_shards_naming_it_and_leaves_nothing(tiny_shards, tmp_path, workers):
    """Raw shards of files already resized and checked (write_shards without resize): a file that has gone bad since is an
    error naming it, raised from a worker process too, and no shard directory appears."""
    ready = read_catalog(tiny_shards)
    broken = tmp_path / "gone_bad.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    ready.loc[len(ready) // 2, RESIZED] = str(broken)
    settings = ShardSettings(size=32, label_cols=tuple(read_metadata(tiny_shards)["label_cols"]), shard_size=4, image_encoding="raw")
    with pytest.raises(ValueError, match="gone_bad.png"):
        write_shards(ready, tmp_path / "shards", settings, workers=workers)
    assert not (tmp_path / "shards").exists() and [p.name for p in tmp_path.iterdir()] == ["gone_bad.png"]


@pytest.mark.parametrize("present", [(0, 1, 2), (1, 2), (0, 2), (0,), ()])
def test_joining_parts_appends_those_that_hold_records_in_order(tmp_path, present):
    """A part whose images were all unreadable writes no file: the shard is the others, in order (the first part's
    own file included or not), with the SHA-256 of its bytes; no part files are left; no part at all, no shard."""
    from zoobot_core.shard_writer import _join_parts

    (tmp_path / "train").mkdir()
    shard = "train/train_00000.tfrecord"
    contents = {k: bytes([k + 1]) * (1000 * (k + 1)) for k in present}
    for k, data in contents.items():
        (tmp_path / (shard if k == 0 else f"{shard}.part{k:04d}")).write_bytes(data)
    checksum = _join_parts(tmp_path, shard, 3)
    if not present:
        assert checksum is None and not (tmp_path / shard).exists()
    else:
        expected = b"".join(contents[k] for k in sorted(contents))
        assert (tmp_path / shard).read_bytes() == expected and checksum == hashlib.sha256(expected).hexdigest()
    assert [p.name for p in (tmp_path / "train").iterdir() if ".part" in p.name] == []


@pytest.mark.parametrize("code", ["EIO", "ESTALE", "ENOSPC"])
def test_a_failing_file_system_stops_the_survey_shards_with_the_policy_resizing_uses(tiny_synthetic, tmp_path, monkeypatch, code):
    """write_shards(resize=...) uses images.unreadable_reason, the one policy for every catalog: an I/O error reading a
    catalog image stops the job with MachineError naming the file, and no shards or unreadable list appear; a corrupt
    image in the same catalog is listed as unreadable_image once the file system works."""
    import errno

    import zoobot_core.shard_writer as shard_writer
    from zoobot_core.catalog import CatalogConfig, validate_catalog
    from zoobot_core.images import MachineError, ResizeConfig

    tree = get_tree("gz_decals_dr5")
    validated, _ = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(label_cols=tuple(tree.label_cols), max_quarantine_fraction=0.2))
    victim = validated.loc[3, "file_loc"]
    real_load = shard_writer.load_resized

    def load_on_a_failing_disk(path, config):
        if path == victim:
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), path)
        return real_load(path, config)

    settings = ShardSettings(size=32, label_cols=tuple(tree.label_cols), shard_size=8, image_encoding="raw")
    with monkeypatch.context() as patch:
        patch.setattr(shard_writer, "load_resized", load_on_a_failing_disk)
        with pytest.raises(MachineError, match=rf"reading {victim} into a shard.*{code}.*rerun"):
            write_shards(validated, tmp_path / "shards", settings, source_col="file_loc", resize=ResizeConfig(size=32))
    assert not (tmp_path / "shards").exists() and not list(tmp_path.glob(".shards*"))
    write_shards(validated, tmp_path / "shards", settings, source_col="file_loc", resize=ResizeConfig(size=32))
    unreadable = pd.read_parquet(tmp_path / "shards" / "unreadable.parquet")
    assert validated.loc[3, "id_str"] not in set(unreadable["id_str"]) and set(unreadable["reason"]) == {"unreadable_image"}
    assert len(pd.read_parquet(tmp_path / "shards" / MANIFEST)) + len(unreadable) == len(validated)


@pytest.mark.parametrize("hash_images", [True, False], ids=["hash_images", "no_hash_images"])
def test_provenance_hash_images_decides_whether_write_shards_hashes_the_source_images(tiny_synthetic, tmp_path, monkeypatch, hash_images):
    """provenance.hash_images reaches write_shards: off, no image is hashed, the manifest has no source_sha256 and
    provenance lists no image; on, every image written is hashed once and provenance lists its SHA-256. The shard
    files' own SHA-256 is in the manifest either way."""
    import json
    from pathlib import Path

    import zoobot_core.shard_writer as shard_writer
    from zoobot_core.catalog import CatalogConfig, validate_catalog
    from zoobot_core.provenance import write_provenance

    tree = get_tree("gz_decals_dr5")
    validated, quarantine = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(label_cols=tuple(tree.label_cols), max_quarantine_fraction=0.2))
    validated.to_parquet(tmp_path / "validated.parquet")
    quarantine.to_parquet(tmp_path / "quarantine.parquet")
    hashed: list[str] = []
    real_sha256 = shard_writer.file_sha256
    monkeypatch.setattr(shard_writer, "file_sha256", lambda path: hashed.append(str(path)) or real_sha256(path))  # a spy: hashes as before
    settings = ShardSettings(size=32, label_cols=tuple(tree.label_cols), shard_size=8, image_encoding="raw")
    _catalog_in_chunks(tmp_path / "validated.parquet", tmp_path / "quarantine.parquet", tmp_path / "shards", settings, 0.2, hash_images=hash_images)
    manifest = pd.read_parquet(tmp_path / "shards" / MANIFEST)
    for shard, group in manifest.groupby("shard"):
        assert group["shard_sha256"].iloc[0] == _sha(tmp_path / "shards" / shard)
    provenance = write_provenance({"seed": 1}, tiny_synthetic / "catalog.csv", tmp_path / "validated.parquet", tmp_path / "shards",
                                  tmp_path / "provenance.json", tmp_path / "provenance_images.parquet", tmp_path, hash_images=hash_images)
    images = pd.read_parquet(tmp_path / "provenance_images.parquet")
    assert json.loads((tmp_path / "provenance.json").read_text())["inputs"] == provenance["inputs"]
    files = validated.set_index("id_str")["file_loc"]
    if hash_images:
        assert sorted(hashed) == sorted(files[manifest["id_str"]])  # each image written, hashed once as it was read
        sums = manifest.set_index("id_str")["source_sha256"]
        assert sums.to_dict() == {i: _sha(Path(files[i])) for i in manifest["id_str"]}
        assert provenance["inputs"]["n_images"] == len(images) == len(manifest) and len(provenance["inputs"]["images_digest"]) == 64
        assert images.set_index("id_str")["sha256"].to_dict() == sums.to_dict()
    else:
        assert hashed == []  # not one image's bytes hashed
        assert "source_sha256" not in manifest and "source_sha256" not in pd.read_parquet(tmp_path / "shards" / MANIFEST)
        assert provenance["inputs"]["n_images"] is None and provenance["inputs"]["images_digest"] is None and len(images) == 0


def test_provenance_hashes_the_images_of_chunks_written_without_their_checksums(tiny_synthetic, tmp_path):
    """provenance.hash_images turned on after a run: only the chunks a later edit touched are written again, with the
    checksums; provenance hashes the other chunks' images itself, so every image has its file's SHA-256."""
    from zoobot_core.catalog import CatalogConfig, validate_catalog
    from zoobot_core.chunk_shards import combine_chunk_files, write_chunk_shards_file
    from zoobot_core.images import ResizeConfig
    from zoobot_core.provenance import write_provenance

    tree = get_tree("gz_decals_dr5")
    validated, quarantine = validate_catalog(tiny_synthetic / "catalog.csv", CatalogConfig(label_cols=tuple(tree.label_cols), max_quarantine_fraction=0.2,
                                                                                           chunk_size=25))
    validated.to_parquet(tmp_path / "validated.parquet")
    quarantine.to_parquet(tmp_path / "quarantine.parquet")
    settings = ShardSettings(size=16, label_cols=tuple(tree.label_cols), shard_size=8, image_encoding="raw")
    dirs = [str(tmp_path / "shards" / f"chunk_{c}") for c in sorted(validated["chunk"].unique())]
    assert len(dirs) == 2
    for chunk, folder in enumerate(dirs):  # chunk 0 with the checksums, chunk 1 (written earlier, hash_images off) without
        write_chunk_shards_file(tmp_path / "validated.parquet", chunk, folder, settings, ResizeConfig(size=16), hash_images=chunk == 0)
    combine_chunk_files(tmp_path / "validated.parquet", tmp_path / "quarantine.parquet", dirs, 0.2, settings.label_cols)
    manifest = pd.read_parquet(tmp_path / "shards" / MANIFEST)
    assert manifest["source_sha256"].isna().any() and manifest["source_sha256"].notna().any()
    write_provenance({"seed": 1}, tiny_synthetic / "catalog.csv", tmp_path / "validated.parquet", tmp_path / "shards", tmp_path / "provenance.json",
                     tmp_path / "images.parquet", tmp_path, hash_images=True)
    images = pd.read_parquet(tmp_path / "images.parquet")
    assert len(images) == len(manifest) and images["sha256"].notna().all()
    assert all(sha == _sha(Path(f)) for f, sha in zip(images["file_loc"], images["sha256"]))

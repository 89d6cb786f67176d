"""Deterministic TFRecord shards: split by a hash of (seed, id), fixed order, no timestamps, atomic writes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core.catalog import FILE, ID, LABELLED
from zoobot_core.images import RESIZED, load_rgb
from zoobot_core.io import atomic_dir, atomic_write_table, file_sha256, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"
MANIFEST = "manifest.parquet"
METADATA = "shards.json"


def hash_fraction(id_str: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, id) alone: the basis of every split and shard order."""
    digest = hashlib.sha256(f"{seed}:{id_str}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(ids: pd.Series, seed: int, train_fraction: float, val_fraction: float) -> pd.Series:
    """'train' / 'val' / 'test' per id, by hash: adding or reordering rows never moves another galaxy."""
    if not 0 < train_fraction < 1 or val_fraction < 0 or train_fraction + val_fraction > 1:
        raise ValueError(f"Split fractions must satisfy 0 < train < 1 and train + val <= 1; got train={train_fraction}, val={val_fraction}")
    u = ids.map(lambda i: hash_fraction(i, seed))
    return pd.Series(np.where(u < train_fraction, "train", np.where(u < train_fraction + val_fraction, "val", "test")), index=ids.index)


def _example(id_str: str, encoded: bytes, labels: dict[str, float]):
    import tensorflow as tf

    feature = {
        "id_str": tf.train.Feature(bytes_list=tf.train.BytesList(value=[id_str.encode()])),
        "matrix": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
    }
    for col, value in labels.items():
        feature[col] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


@dataclass(frozen=True)
class ShardSettings:
    """How shards are cut: split fractions, seed, galaxies per shard, and the image size they hold."""

    size: int
    label_cols: tuple[str, ...] = ()
    shard_size: int = 4096
    seed: int = 42
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    channels: int = 3
    image_encoding: str = "encoded"  # 'encoded': the PNG/JPEG bytes as they are; 'raw': decoded uint8 pixels


def _image_bytes(path: str, read_encoded: Callable[[str], bytes], raw_size: int | None) -> bytes:
    """What a shard stores for one image: its encoded bytes, or its decoded uint8 pixels when raw_size is set."""
    encoded = read_encoded(path)
    return encoded if raw_size is None else _raw_pixels(encoded, raw_size)


def _write_shard(path: Path, ids: list[str], labels: np.ndarray, label_cols: tuple[str, ...], images: Iterable[bytes]) -> str:
    """Write one shard file (labels: one row of floats per id, columns label_cols); return its SHA-256."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for id_str, row, image in zip(ids, labels.tolist(), images, strict=True):
            # deterministic: protobuf maps (the features) otherwise serialize in a per-process order
            writer.write(_example(id_str, image, dict(zip(label_cols, row))).SerializeToString(deterministic=True))
    return file_sha256(path)


def write_shards(
    catalog: pd.DataFrame,
    shard_dir: Path | str,
    settings: ShardSettings,
    encoded_bytes: Callable[[str], bytes] | None = None,
    workers: int = 1,
    source_col: str = RESIZED,
    split_col: str | None = None,
) -> pd.DataFrame:
    """Write catalog galaxies into shard_dir/<split>/<split>_NNNNN.tfrecord; return the manifest.

    Labelled galaxies go to train/val/test by hash, unlabelled ones to 'unlabelled' (or, with
    `split_col`, to the split that column names: train, val, test or unlabelled). Within a
    split, galaxies are ordered by their hash (a seeded, rerun-stable shuffle). Images are stored
    as the encoded bytes of the files in `source_col` (PNG/JPEG), or as `encoded_bytes(path)` when
    given (a module-level function or functools.partial when workers > 1, so it can go to another
    process). When there is decoding to do (raw shards, or `encoded_bytes`), `workers` processes
    do it while this one serializes and writes; plain encoded bytes are copied here, which is faster
    than passing them between processes. The bytes written do not depend on `workers`.
    The whole directory appears at once when writing succeeds.
    """
    shard_dir = Path(shard_dir)
    if settings.image_encoding not in ("encoded", "raw"):
        raise ValueError(f"image_encoding must be 'encoded' or 'raw', got {settings.image_encoding!r}")
    df = catalog.copy()
    labelled = df[LABELLED] if LABELLED in df else pd.Series(bool(settings.label_cols), index=df.index)
    if split_col is not None:
        unknown = sorted(set(df[split_col]) - {*SPLITS, UNLABELLED})
        if unknown:
            raise ValueError(f"Column {split_col!r} names unknown split(s) {unknown}; use {[*SPLITS, UNLABELLED]}")
        df["split"] = df[split_col].astype(str)
    else:
        df["split"] = UNLABELLED
        if labelled.any():
            df.loc[labelled, "split"] = assign_splits(df.loc[labelled, ID], settings.seed, settings.train_fraction, settings.val_fraction)
    df["_order"] = df[ID].map(lambda i: hash_fraction(i, settings.seed + 1))
    df = df.sort_values(["split", "_order", ID]).reset_index(drop=True)
    decoding = settings.image_encoding == "raw" or encoded_bytes is not None
    load = partial(_image_bytes, read_encoded=encoded_bytes or _read_bytes, raw_size=settings.size if settings.image_encoding == "raw" else None)
    manifest_parts = []
    with atomic_dir(shard_dir) as tmp, _image_pool(workers if decoding else 1) as pool:
        for split in (*SPLITS, UNLABELLED):
            rows = df[df["split"] == split]
            (tmp / split).mkdir()
            label_cols = tuple(settings.label_cols) if split != UNLABELLED else ()
            n_shards = -(-len(rows) // settings.shard_size)
            for shard_index in tqdm(range(n_shards), desc=f"{split} shards", unit="shard", mininterval=10, disable=n_shards < 2):
                part = rows.iloc[shard_index * settings.shard_size : (shard_index + 1) * settings.shard_size]
                name = f"{split}/{split}_{shard_index:05d}.tfrecord"
                paths = part[source_col].astype(str).tolist()
                images = pool.map(load, paths, chunksize=32) if pool else map(load, paths)
                labels = part[list(label_cols)].to_numpy(dtype=np.float64) if label_cols else np.empty((len(part), 0))
                checksum = _write_shard(tmp / name, part[ID].tolist(), labels, label_cols, images)
                manifest_parts.append(part[[ID, "split"]].assign(shard=name, index_in_shard=np.arange(len(part)), shard_sha256=checksum))
        manifest = pd.concat(manifest_parts, ignore_index=True) if manifest_parts else pd.DataFrame(columns=[ID, "split", "shard", "index_in_shard", "shard_sha256"])
        atomic_write_table(manifest, tmp / MANIFEST)
        for split in (*SPLITS, UNLABELLED):
            keep = [c for c in df.columns if c not in ("_order",)]
            atomic_write_table(df.loc[df["split"] == split, keep].reset_index(drop=True), tmp / f"{split}_catalog.parquet")
        metadata = {
            "size": settings.size,
            "channels": settings.channels,
            "label_cols": list(settings.label_cols),
            "seed": settings.seed,
            "train_fraction": settings.train_fraction,
            "val_fraction": settings.val_fraction,
            "shard_size": settings.shard_size,
            "image_encoding": settings.image_encoding,
            "counts": {s: int((df["split"] == s).sum()) for s in (*SPLITS, UNLABELLED)},
        }
        write_json(metadata, tmp / METADATA)
    log.info("Wrote shards to %s: %s", shard_dir, metadata["counts"])
    return manifest


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


@contextmanager
def _image_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for image reading and decoding (none for workers <= 1)."""
    if workers <= 1:
        yield None
        return
    # spawn, not fork: the parent may already run TensorFlow's threads, which do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _raw_pixels(encoded: bytes, size: int) -> bytes:
    """Decoded uint8 RGB pixels of an encoded image, checked against the shard size."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if pixels.shape != (size, size, 3):
        raise ValueError(f"Image of shape {pixels.shape} cannot go into {size} px raw shards; resize it first")
    return pixels.tobytes()


def read_metadata(shard_dir: Path | str) -> dict:
    """The shards.json written beside the shards."""
    return json.loads((Path(shard_dir) / METADATA).read_text())


def image_encoding(shard_dir: Path | str) -> str:
    """How the shards store images ('encoded' for shards written before the option existed)."""
    return read_metadata(shard_dir).get("image_encoding", "encoded")


def read_catalog(shard_dir: Path | str) -> pd.DataFrame:
    """Every galaxy in the shards, with its split: the per-split catalogs written beside them, together."""
    return pd.concat([pd.read_parquet(Path(shard_dir) / f"{s}_catalog.parquet") for s in (*SPLITS, UNLABELLED)], ignore_index=True)


def shard_paths(shard_dir: Path | str, split: str) -> list[str]:
    """Sorted shard files of one split."""
    return sorted(str(p) for p in (Path(shard_dir) / split).glob("*.tfrecord"))


def _png_bytes(path: str, size: int) -> bytes:
    """PNG bytes of an image file resized to size (the seed API's shards)."""
    buffer = io.BytesIO()
    load_rgb(path, size).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class ShardConfig:
    """Zoobot's ShardConfig: write train / eval (val) / test and unlabelled shards from catalogs of image files."""

    shard_dir: str
    size: int = 300
    shard_size: int = 4096
    seed: int = 42
    columns_to_save: list[str] = field(default_factory=list)

    @property
    def train_dir(self) -> str:
        return str(Path(self.shard_dir) / "train")

    @property
    def eval_dir(self) -> str:
        return str(Path(self.shard_dir) / "val")

    @property
    def val_dir(self) -> str:
        return self.eval_dir

    @property
    def test_dir(self) -> str:
        return str(Path(self.shard_dir) / "test")

    @property
    def unlabelled_dir(self) -> str:
        return str(Path(self.shard_dir) / UNLABELLED)

    def prepare_shards(
        self,
        labelled_catalog: pd.DataFrame,
        unlabelled_catalog: pd.DataFrame | None = None,
        train_test_fraction: float = 0.8,
        columns_to_save: list[str] | None = None,
        val_fraction: float | None = None,
    ) -> pd.DataFrame:
        """Resize each catalog's `file_loc` images to `size` and write shards; the rest of the labelled
        galaxies beyond `train_test_fraction` are split evenly into val (eval) and test unless `val_fraction` is given."""
        columns = list(columns_to_save if columns_to_save is not None else self.columns_to_save)
        self.columns_to_save = columns
        missing = [c for c in (ID, FILE, *columns) if c not in labelled_catalog.columns]
        if missing:
            raise KeyError(f"labelled_catalog lacks column(s) {missing}; it needs id_str, file_loc and every column in columns_to_save")
        parts = [labelled_catalog.assign(**{LABELLED: True})]
        if unlabelled_catalog is not None and len(unlabelled_catalog):
            parts.append(unlabelled_catalog.assign(**{LABELLED: False}))
        catalog = pd.concat(parts, ignore_index=True)
        settings = ShardSettings(
            size=self.size,
            label_cols=tuple(columns),
            shard_size=self.shard_size,
            seed=self.seed,
            train_fraction=train_test_fraction,
            val_fraction=(1 - train_test_fraction) / 2 if val_fraction is None else val_fraction,
        )
        return write_shards(catalog, self.shard_dir, settings, encoded_bytes=partial(_png_bytes, size=self.size), source_col=FILE)


def write_shards_file(ready_path: Path | str, shard_dir: Path | str, settings: ShardSettings, workers: int = 1) -> pd.DataFrame:
    """The write_shards rule: shard the ready catalog's resized images with `workers` processes."""
    return write_shards(pd.read_parquet(ready_path), shard_dir, settings, workers=workers)

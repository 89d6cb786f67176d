"""Shard benchmark: writing (ours vs Zoobot's one-process raw-matrix writer) and reading (shards vs
image files vs what a training step consumes), at the same image size.

Run: `make bench` (or `.venv/bin/python tests/benchmarks/bench_shards.py`). Galaxies are the real
sample (../shared) resized to --size and repeated to --n, else synthetic ones.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from timing import median_seconds

from zoobot_core.images import load_rgb

SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/gz_decals_rings_sample/images"


def make_images(workdir: Path, n: int, size: int) -> pd.DataFrame:
    """n galaxies at size px as PNG files, with 34 vote columns: a ready catalog."""
    sources = sorted(SAMPLE.glob("*.png"))
    if not sources:
        from zoobot_core.synthetic import draw_morphology, render_galaxy

        for i in range(64):
            rng = np.random.default_rng([1, i])
            Image.fromarray(render_galaxy(draw_morphology(rng), 128, rng)).save(workdir / f"src{i}.png")
        sources = sorted(workdir.glob("src*.png"))
    small = [load_rgb(p, size) for p in sources]
    rows = []
    for i in range(n):
        path = workdir / f"g{i:06d}.png"
        small[i % len(small)].save(path, compress_level=1)
        rows.append({"id_str": f"g{i:06d}", "resized_loc": str(path), "file_loc": str(path), "labelled": True})
    catalog = pd.DataFrame(rows)
    votes = np.random.default_rng(0).integers(0, 40, (n, 34))
    for j in range(34):
        catalog[f"answer_{j}"] = votes[:, j]
    return catalog


def baseline_write(catalog: pd.DataFrame, path: Path, label_cols: list[str]) -> None:
    """Zoobot's original approach: one process, decode each image and store its raw matrix."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for _, row in catalog.iterrows():
            matrix = np.asarray(Image.open(row["file_loc"]).convert("RGB"), dtype=np.uint8)
            feature = {
                "id_str": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["id_str"].encode()])),
                "matrix": tf.train.Feature(bytes_list=tf.train.BytesList(value=[matrix.tobytes()])),
            }
            feature.update({c: tf.train.Feature(float_list=tf.train.FloatList(value=[float(row[c])])) for c in label_cols})
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def per_record_dataset(files: list[str], label_cols: list[str], batch_size: int, size: int, image_encoding: str):
    """Reading baseline: one parse_single_example per record, then batch (what get_dataset did before)."""
    import tensorflow as tf

    from zoobot_core.datasets import _decode

    features = {"id_str": tf.io.FixedLenFeature([], tf.string), "matrix": tf.io.FixedLenFeature([], tf.string)}
    features.update({c: tf.io.FixedLenFeature([], tf.float32) for c in label_cols})

    def parse(record):
        item = tf.io.parse_single_example(record, features)
        if image_encoding == "raw":
            item["matrix"] = tf.cast(tf.reshape(tf.io.decode_raw(item["matrix"], tf.uint8), (size, size, 3)), tf.float32)
        else:
            item["matrix"] = _decode(item["matrix"], size)
        return item

    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8)).shuffle(2048, seed=0)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def drain(dataset) -> int:
    return sum(int(batch["matrix"].shape[0]) for batch in dataset)


def measure(size: int, args: argparse.Namespace) -> tuple[str, str]:
    """One size's write row and read row of the tables."""
    import keras

    from zoobot_core.datasets import get_dataset, get_image_dataset
    from zoobot_core.losses import DirichletMultinomialLoss
    from zoobot_core.model import get_model
    from zoobot_core.shard_writer import write_shards
    from zoobot_core.shards import ShardSettings, shard_paths

    with tempfile.TemporaryDirectory() as workdir:
        tmp = Path(workdir)
        catalog = make_images(tmp, args.n, size)
        labels = [c for c in catalog.columns if c.startswith("answer_")]
        settings = ShardSettings(size=size, label_cols=tuple(labels), shard_size=512, train_fraction=0.98, val_fraction=0.01)
        ours_s = median_seconds(lambda: write_shards(catalog, tmp / "shards", settings), args.repeats)
        raw_settings = ShardSettings(**{**settings.__dict__, "image_encoding": "raw"})
        raw_s = median_seconds(lambda: write_shards(catalog, tmp / "raw", raw_settings), args.repeats)
        raw2_s = median_seconds(lambda: write_shards(catalog, tmp / "raw2", raw_settings, workers=2), args.repeats)
        raw_mb = sum(p.stat().st_size for p in (tmp / "raw").rglob("*.tfrecord")) / 2**20
        base_s = median_seconds(lambda: baseline_write(catalog, tmp / "baseline.tfrecord", labels), args.repeats)
        ours_mb = sum(p.stat().st_size for p in (tmp / "shards").rglob("*.tfrecord")) / 2**20
        base_mb = (tmp / "baseline.tfrecord").stat().st_size / 2**20
        write_row = (
            f"| {size} | {args.n / base_s:.0f} | {base_mb:.1f} | {args.n / ours_s:.0f} | {ours_mb:.1f} | {base_s / ours_s:.2f}x "
            f"| {args.n / raw_s:.0f} | {args.n / raw2_s:.0f} | {raw_mb:.1f} |"
        )

        files = shard_paths(tmp / "shards", "train")

        def from_shards() -> int:
            return drain(get_dataset(files, labels, args.batch_size, shuffle=True, requested_img_size=size))

        n_train = from_shards()
        shard_s = median_seconds(from_shards, args.repeats)
        raw_files = shard_paths(tmp / "raw", "train")
        raw_read_s = median_seconds(
            lambda: drain(get_dataset(raw_files, labels, args.batch_size, shuffle=True, requested_img_size=size, image_encoding="raw")), args.repeats
        )
        base_enc_s = median_seconds(lambda: drain(per_record_dataset(files, labels, args.batch_size, size, "encoded")), args.repeats)
        base_raw_s = median_seconds(lambda: drain(per_record_dataset(raw_files, labels, args.batch_size, size, "raw")), args.repeats)
        paths = list(catalog["resized_loc"])
        file_s = median_seconds(lambda: drain(get_image_dataset(paths, "png", size, args.batch_size)), args.repeats)

    crop = int(round(size * 0.75))
    model = get_model(34, size, crop, max(crop, 32), 3, seed=0, batchnorm_momentum=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DirichletMultinomialLoss([(j, j) for j in range(34)]))
    x = np.random.default_rng(0).random((args.batch_size, size, size, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 40, (args.batch_size, 34)).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, y)  # compile and warm up
    steps = 10
    train_rate = steps * args.batch_size / median_seconds(lambda: [model.train_on_batch(x, y) for _ in range(steps)], 1)
    read_row = (
        f"| {size} | {n_train / base_enc_s:.0f} | {n_train / shard_s:.0f} | {n_train / base_raw_s:.0f} | {n_train / raw_read_s:.0f} "
        f"| {len(paths) / file_s:.0f} | {train_rate:.0f} "
        f"| {n_train / shard_s / train_rate:.1f}x |"
    )
    return write_row, read_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    rows = [measure(size, args) for size in args.size]
    print(f"{args.n} galaxies, PNG-encoded at each size; median of {args.repeats}; 2-core CPU\n")
    print("Writing shards (one process unless stated):\n")
    print(
        "| px | baseline: decode + raw matrix, img/s | baseline MB | ours, encoded: bytes copied, img/s | ours MB | speed-up "
        "| ours, raw, img/s | ours, raw, 2 worker processes, img/s | raw MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(r[0] for r in rows))
    print("\nReading (read + decode + batch, shuffled) vs a training step's consumption (EfficientNetB0, crop 0.75):\n")
    print(
        "| px | encoded, per-record parse (baseline), img/s | encoded, ours (batched parse), img/s | raw, per-record parse, img/s "
        "| raw, ours, img/s | image files (get_image_dataset), img/s | train step consumes, img/s | encoded / train step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(r[1] for r in rows))


if __name__ == "__main__":
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.disable(logging.WARNING)
    main()

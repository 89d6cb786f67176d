"""Representations of a catalog from a Zoobot 2 encoder, with no training: the rule `encode` of the main
chain when `representations.encoder` is set.

Each split's shards are read a batch at a time, the images scaled to [0, 1] (the mean over RGB for a
greyscale encoder), the encoder's pooled features written as Parquet row groups of `window` galaxies, in
the same table as the predict rule's representations (id_str, feat_0000, ...), so PCA, clusters and
nearest neighbours run on them unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core import shards as shard_io
from zoobot_core.finetuned import model_input
from zoobot_core.predict import representation_table

log = logging.getLogger(__name__)


def encode_windows(encoder_folder: str | Path, shard_dir: str | Path, split: str, batch_size: int = 64, window: int = 4096) -> Iterator[pd.DataFrame]:
    """Yield the encoder's representations of one split, about `window` galaxies at a time in shard order
    (one table even for an empty split)."""
    import keras

    from zoobot_core.datasets import get_dataset
    from zoobot_core.encoders import load_encoder

    metadata = shard_io.read_metadata(shard_dir)
    size = int(metadata["size"]) if "size" in metadata else None
    encoder = load_encoder(encoder_folder, (size, size, None))
    channels = int(encoder.input_shape[-1])
    paths = shard_io.shard_paths(shard_dir, split)
    n_expected = metadata["counts"][split]
    n_features = int(encoder.output.shape[-1])
    ids: list[str] = []
    features: list[np.ndarray] = []
    n_read, yielded = 0, False

    def table() -> pd.DataFrame:
        return representation_table(ids, np.concatenate(features) if features else np.zeros((0, n_features), np.float32))

    if paths:
        dataset = get_dataset(paths, [], batch_size, shuffle=False, requested_img_size=size, image_encoding=shard_io.image_encoding(shard_dir))
        for batch in tqdm(dataset, total=-(-n_expected // batch_size), desc=f"encoding {split}", mininterval=10):
            # [0, 1], and a greyscale encoder's channel the mean of RGB, as the finetuning chain feeds it (finetuned.model_input)
            images = model_input(keras.ops.convert_to_numpy(batch["matrix"]), channels)
            features.append(np.asarray(encoder.predict_on_batch(images), np.float32))
            ids.extend(i.decode() for i in batch["id_str"].numpy())
            if len(ids) >= window:
                n_read += len(ids)
                yield table()
                ids, features, yielded = [], [], True
    n_read += len(ids)
    if n_read != n_expected:
        raise RuntimeError(f"Read {n_read} galaxies from the {split} shards but shards.json lists {n_expected}; rewrite the shards")
    if ids or not yielded:
        yield table()


METADATA_KEY = "zoobot_encoder"  # the Parquet metadata key recording which encoder made the representations


def encode_files(encoder_folder: str | Path, shard_dir: str | Path, split: str, out_path: str | Path, batch_size: int = 64, window: int = 4096,
                 source: str | None = None) -> int:
    """The encode rule: one split's representations as Parquet, written atomically a window at a time; returns the galaxies encoded.

    The file's metadata (key zoobot_encoder) records the encoder: `source` (as configured), architecture, weights file and
    its SHA-256, and the Hugging Face commit of a cached snapshot.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from zoobot_core.encoders import encoder_fingerprint
    from zoobot_core.io import atomic_path

    fingerprint = {"source": source, **encoder_fingerprint(encoder_folder)}
    log.info("Encoder %s: %s", source or encoder_folder, json.dumps(fingerprint))
    n = 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(Path(out_path)))
        writer = None
        for table in encode_windows(encoder_folder, shard_dir, split, batch_size, window):
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(fingerprint)})
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(tmp, arrow.schema))
            writer.write_table(arrow.cast(writer.schema))
            n += len(table)
    log.info("Encoded %d %s galaxies with %s", n, split, encoder_folder)
    return n

"""What a shard folder is, and reading it: <split>/<split>_NNNNN.tfrecord files (train, val, test, unlabelled),
manifest.parquet (each galaxy's shard, record and checksums), <split>_catalog.parquet, unreadable.parquet and
shards.json (how they were cut). Writing is shard_writer's; which split a galaxy is in, splits'.

The workflow's catalogs are shards in chunks (chunk_shards): chunk_<k>/ folders, each a shard folder of the
galaxies a hash of their id gives it, and beside them the same files for all chunks together (the manifest's
shards named chunk_<k>/<split>/<file>; shards.json listing the chunks). Every reader here takes either layout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"
MANIFEST = "manifest.parquet"
METADATA = "shards.json"
UNREADABLE = "unreadable.parquet"
SHARD_SPLIT = "shard_split"  # ready.parquet's column naming each galaxy's split (a catalog may have its own "split")
CHUNK_PREFIX = "chunk_"



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


def read_metadata(shard_dir: Path | str) -> dict:
    """The shards.json written beside the shards."""
    return json.loads((Path(shard_dir) / METADATA).read_text())


def image_encoding(shard_dir: Path | str) -> str:
    """How the shards store images ('encoded' for shards written before the option existed)."""
    return read_metadata(shard_dir).get("image_encoding", "encoded")


def read_catalog(shard_dir: Path | str) -> pd.DataFrame:
    """Every galaxy in the shards, with its split: the per-split catalogs written beside them, together."""
    return pd.concat([pd.read_parquet(Path(shard_dir) / f"{s}_catalog.parquet") for s in (*SPLITS, UNLABELLED)], ignore_index=True)


def chunk_names(shard_dir: Path | str) -> list[str]:
    """The chunk folders of a folder of shards in chunks, in chunk order, as its shards.json lists them (folders that
    it does not list, left by another version of the catalog, are not read); [] for a plain shard folder."""
    chunks = read_metadata(shard_dir).get("chunks") or {}
    return sorted(chunks, key=lambda name: int(name.removeprefix(CHUNK_PREFIX)))


def shard_paths(shard_dir: Path | str, split: str) -> list[str]:
    """Shard files of one split: sorted, chunk after chunk for shards in chunks, each chunk checked to hold what the
    combined shards.json says it holds (a chunk written again after they were combined: RuntimeError naming it)."""
    root = Path(shard_dir)
    listed = read_metadata(root).get("chunks") or {} if (root / METADATA).is_file() else {}
    folders = [root / name for name in chunk_names(root)] if listed else [root]
    changed = [f.name for f in folders if listed and read_metadata(f).get("rows_digest") != listed[f.name]]
    if changed:
        raise RuntimeError(f"Shard chunk(s) {', '.join(changed)} in {root} no longer hold what its shards.json lists (written again after the "
                           f"chunks were combined): combine them again, snakemake --force {root / METADATA}")
    return [str(p) for folder in folders for p in sorted((folder / split).glob("*.tfrecord"))]

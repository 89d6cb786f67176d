"""A finetuning catalog (labelled or survey) as shards, one folder per chunk of its galaxies.

The data path, top to bottom:

1. validation gives every galaxy a chunk, by a hash of its id (catalog.assign_chunks), at most `max_chunks` of
   them however large the catalog;
2. one job per chunk reads, resizes and writes its images straight into that chunk's shards with worker processes
   (write_chunk_shards -> shards.write_shards with `resize`: the main chain's image path and error policy; no
   resized copies on disk), recording the chunk's number and the digest of the galaxies it holds;
3. gathering (gather_chunk_files) joins the chunks' manifests and unreadable images onto the validated catalog:
   the ready catalog says in which chunk, shard and record each galaxy is; a chunk written from another version
   of the catalog is refused, naming it, rather than joined;
4. finetuning and survey prediction read the images back a batch at a time (image_source.ShardImages).

Adding galaxies changes the digest of only the chunks they fall in: only those are written again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from zoobot_core.catalog import CHUNK, FILE, ID, chunk_digests
from zoobot_core.images import ResizeConfig, gather_index, write_gathered
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import MANIFEST, SHARD_SPLIT, UNLABELLED, UNREADABLE, ShardSettings, read_metadata

log = logging.getLogger(__name__)

CHUNK_PREFIX = "chunk_"
SHARD = "shard"  # ready.parquet's column: <chunk folder>/<split>/<file>.tfrecord, relative to the dataset's shards folder
RECORD = "index_in_shard"


def write_chunk_shards(
    validated: pd.DataFrame, chunk: int, out_dir: Path | str, settings: ShardSettings, resize: ResizeConfig, workers: int = 1,
    hash_images: bool = True,
) -> pd.DataFrame:
    """One chunk's galaxies, resized as `resize` says, straight into shards in out_dir (atomically, as a whole);
    the manifest. Images that cannot be used are listed with their reason in unreadable.parquet (gathering
    quarantines them); shards.json records the chunk and the digest of its galaxies."""
    rows = validated[validated[CHUNK] == chunk]
    if rows.empty:
        raise ValueError(f"Chunk {chunk} has no galaxies in the validated catalog; rerun validation (snakemake -R validate_finetune_catalog)")
    digest = chunk_digests(rows)[int(chunk)]
    unlabelled = rows.assign(_split=UNLABELLED)  # labels stay in the catalog: a chunk's shards hold images and ids only
    manifest = write_shards(
        unlabelled, out_dir, settings, workers=workers, source_col=FILE, split_col="_split", resize=resize, hash_images=hash_images,
        metadata={"chunk": int(chunk), "rows_digest": digest},
    )
    log.info("Chunk %d: %d of %d galaxies written to %s", chunk, len(manifest), len(rows), out_dir)
    return manifest


def write_chunk_shards_file(
    validated_path: Path | str, chunk: int, out_dir: Path | str, settings: ShardSettings, resize: ResizeConfig, workers: int = 1,
    hash_images: bool = True,
) -> pd.DataFrame:
    """The write_finetune_shards rule: one chunk of a validated finetuning catalog into shards."""
    validated = pd.read_parquet(validated_path, filters=[(CHUNK, "==", int(chunk))])
    return write_chunk_shards(validated, chunk, out_dir, settings, resize, workers, hash_images)


def check_chunks(validated: pd.DataFrame, chunk_dirs: list[Path]) -> None:
    """Every chunk's shards hold exactly the galaxies the validated catalog gives it: RuntimeError naming the
    stale or missing chunks (written from another version of the catalog) and the command that rewrites them."""
    expected = chunk_digests(validated)
    found = {}
    for chunk_dir in chunk_dirs:
        meta = read_metadata(chunk_dir) if (chunk_dir / "shards.json").is_file() else {}
        found[meta.get("chunk", chunk_dir.name)] = meta.get("rows_digest")
    stale = sorted(str(c) for c in set(found) | set(expected) if found.get(c) != expected.get(c))
    if stale:
        raise RuntimeError(
            f"Shard chunk(s) {', '.join(stale)} do not hold the galaxies the validated catalog gives them (written from "
            "another version of it, or missing); rewrite them: snakemake -R write_finetune_shards"
        )


def chunk_index(chunk_dirs: list[Path]) -> pd.DataFrame:
    """Per galaxy of the chunks: its shard (relative to the chunks' parent folder) and record, or why it has none."""
    frames = []
    for chunk_dir in chunk_dirs:
        written = pd.read_parquet(chunk_dir / MANIFEST, columns=[ID, "shard", RECORD])
        frames.append(written.assign(**{SHARD: chunk_dir.name + "/" + written["shard"], "reason": None, "message": None}))
        frames.append(pd.read_parquet(chunk_dir / UNREADABLE).assign(**{SHARD: None, RECORD: -1}))
    columns = [ID, SHARD, RECORD, "reason", "message"]
    frames = [f[columns] for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def remove_orphans(chunk_dirs: list[Path]) -> list[Path]:
    """Chunk folders beside `chunk_dirs` that the catalog no longer has (after its chunk count changed), removed:
    nothing reads them, and they would hold the disk a survey's images take."""
    parents = {d.parent for d in chunk_dirs}
    keep = {d.resolve() for d in chunk_dirs}
    orphans = [p for parent in parents for p in sorted(parent.glob(f"{CHUNK_PREFIX}*")) if p.is_dir() and p.resolve() not in keep]
    for orphan in orphans:
        log.info("Removing %s: the catalog has no such chunk now", orphan)
        shutil.rmtree(orphan)
    return orphans


# What the design before chunks of shards left in a dataset's folder (results/<run>/finetune/<dataset>/): the survey's
# one shard folder's contents in shards/, and every chunk's resized PNG copies in images/chunk_<k>/
OLD_SHARD_ENTRIES = ("train", "val", "test", "unlabelled", MANIFEST, UNREADABLE, "shards.json",
                     *(f"{split}_catalog.parquet" for split in ("train", "val", "test", "unlabelled")))


def remove_old_layout(shards_root: Path) -> list[Path]:
    """A dataset's outputs from the design before chunks of shards (nothing reads them now; a survey's resized
    copies are as large as its shards), removed: the old survey shards' entries in `shards_root`, and the resized
    chunk folders in images/ beside it (the folder too, once empty)."""
    shards_root = Path(shards_root)
    old = [shards_root / name for name in OLD_SHARD_ENTRIES if (shards_root / name).exists()]
    images = shards_root.parent / "images"
    old += sorted(p for p in images.glob(f"{CHUNK_PREFIX}*") if p.is_dir()) if images.is_dir() else []
    for path in old:
        log.info("Removing %s: left by the design before chunks of shards, nothing reads it now", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if images.is_dir() and not any(images.iterdir()):
        images.rmdir()
    return old


def gather_chunk_files(
    validated_path: Path | str,
    validation_quarantine_path: Path | str,
    chunk_dirs: list[str],
    ready_path: Path | str,
    quarantine_path: Path | str,
    accounting_path: Path | str,
    max_quarantine_fraction: float,
) -> dict:
    """The gather_finetune_images rule: the ready catalog (each galaxy with its shard and record), the full
    quarantine table (validation's rows and unreadable images) and the row accounting; stale chunks refused."""
    dirs = [Path(d) for d in chunk_dirs]
    validated = pd.read_parquet(validated_path)
    validation_quarantine = pd.read_parquet(validation_quarantine_path)
    check_chunks(validated, dirs)
    ready, quarantine = gather_index(validated, validation_quarantine, chunk_index(dirs), max_quarantine_fraction, "snakemake -R write_finetune_shards")
    ready[RECORD] = ready[RECORD].astype("int64")
    remove_orphans(dirs)
    for root in {d.parent for d in dirs}:
        remove_old_layout(root)
    return write_gathered(validated, validation_quarantine, ready, quarantine, ready_path, quarantine_path, accounting_path)


def survey_shards_file(
    validated_path: Path | str,
    validation_quarantine_path: Path | str,
    shard_dir: Path | str,
    settings: ShardSettings,
    resize: ResizeConfig,
    max_quarantine_fraction: float,
    workers: int = 1,
    hash_images: bool = True,
) -> pd.DataFrame:
    """The write_shards rule: the validated catalog's images, resized in `workers` processes, straight into shards
    (one pass: no resized copies on disk), each source image hashed for provenance only with `hash_images`;
    unreadable images are listed in unreadable.parquet for gather_images.
    A catalog whose validation quarantined more than `max_quarantine_fraction` of its rows stops first, before
    any image is read, and one over the limit with its unreadable images stops before the shards appear (so no
    training starts on it); CatalogError naming the reasons."""
    from zoobot_core.catalog import check_quarantine_fraction

    validated = pd.read_parquet(validated_path)
    quarantine = pd.read_parquet(validation_quarantine_path)
    n_in = len(validated) + len(quarantine)
    check_quarantine_fraction(n_in, quarantine, max_quarantine_fraction, "the catalog")

    def check_all(unreadable: pd.DataFrame) -> None:  # and with the unreadable images, before the shards appear
        check_quarantine_fraction(n_in, pd.concat([quarantine[["reason"]], unreadable[["reason"]]], ignore_index=True), max_quarantine_fraction, "the catalog")

    return write_shards(validated, shard_dir, settings, workers=workers, source_col=FILE, resize=resize, check_unreadable=check_all,
                        hash_images=hash_images)


def gather_shards_file(
    validated_path: Path | str,
    validation_quarantine_path: Path | str,
    shard_dir: Path | str,
    ready_path: Path | str,
    quarantine_path: Path | str,
    accounting_path: Path | str,
    max_quarantine_fraction: float,
) -> dict:
    """The gather_images rule: the ready catalog (every galaxy in the shards, with its split), the full
    quarantine table (validation's rows and unreadable images) and the row accounting."""
    from zoobot_core.images import gather_index, write_gathered

    validated = pd.read_parquet(validated_path)
    validation_quarantine = pd.read_parquet(validation_quarantine_path)
    written = pd.read_parquet(Path(shard_dir) / MANIFEST, columns=[ID, "split"]).rename(columns={"split": SHARD_SPLIT})
    unreadable = pd.read_parquet(Path(shard_dir) / UNREADABLE)
    index = pd.concat([written.assign(reason=None, message=None), unreadable.assign(**{SHARD_SPLIT: None})], ignore_index=True)
    ready, quarantine = gather_index(validated, validation_quarantine, index, max_quarantine_fraction, "rerun write_shards")
    return write_gathered(validated, validation_quarantine, ready, quarantine, ready_path, quarantine_path, accounting_path)

"""Every catalog's one image path: a validated catalog (the main chain's, a finetuning catalog, a survey) as shards
in chunks, one folder per chunk of its galaxies.

The data path, top to bottom:

1. validation gives every galaxy a chunk, by a hash of its id (catalog.assign_chunks), at most `max_chunks` of
   them however large the catalog;
2. one job per chunk reads, resizes and writes its images straight into that chunk's shards with worker processes
   (write_chunk_shards -> shard_writer.write_shards with `resize`; no resized copies on disk), recording the chunk's
   number and the digest of what its shards hold (catalog.chunk_digests: ids, image paths and, where the shards
   hold labels, the labels). An image that cannot be used is listed with its reason; a file-system error stops the
   job (images.unreadable_reason: one policy for every catalog);
3. gathering (gather_chunk_files) checks every chunk against the validated catalog (a chunk written from another
   version of it is refused, naming it, rather than joined), quarantines the unreadable images and writes the ready
   catalog (each galaxy's split, chunk shard and record); beside the chunks go the shard files of all chunks
   together (write_combined: manifest, per-split catalogs, unreadable images, shards.json listing the chunks), which
   the readers in shards.py take as one folder of shards (the main chain writes them in a rule of their own,
   combine_chunk_files, that a new quarantine limit does not rerun);
4. training, prediction and the rest read the shards (shards.shard_paths); finetuning reads a batch at a time
   (image_source.ShardImages).

Adding galaxies changes the digest of only the chunks they fall in: only those are written again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from zoobot_core.catalog import CHUNK, FILE, ID, check_quarantine_fraction, chunk_digests
from zoobot_core.images import ResizeConfig, gather_index, write_gathered
from zoobot_core.io import atomic_write_table, write_json
from zoobot_core.shard_cache import CACHE_DIR, ShardCache, prune
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import (
    CHUNK_PREFIX,
    MANIFEST,
    METADATA,
    SHARD_SPLIT,
    SPLITS,
    UNLABELLED,
    UNREADABLE,
    ShardSettings,
    read_metadata,
)

log = logging.getLogger(__name__)

SHARD = "shard"  # ready.parquet's column: <chunk folder>/<split>/<file>.tfrecord, relative to the catalog's shards folder
RECORD = "index_in_shard"
# shards.json keys every chunk of a catalog must share (the rule's settings): chunks that differ were written apart
SHARED_KEYS = ("size", "channels", "label_cols", "seed", "train_fraction", "val_fraction", "shard_size", "image_encoding")


def write_chunk_shards(
    validated: pd.DataFrame, chunk: int, out_dir: Path | str, settings: ShardSettings, resize: ResizeConfig, workers: int = 1,
    hash_images: bool = True,
) -> pd.DataFrame:
    """One chunk's galaxies, resized as `resize` says, straight into shards in out_dir (atomically, as a whole);
    the manifest. With `settings.label_cols` (the main chain) labelled galaxies go to train / val / test by a hash of
    their id and the shards hold their labels; without (a finetuning catalog or a survey: labels stay in the
    catalog) every galaxy is in 'unlabelled'. Images that cannot be used are listed with their reason in
    unreadable.parquet (gathering quarantines them); shards.json records the chunk and the digest of its galaxies.
    Shards whose galaxies and files are unchanged since the chunk was last written are reused from the cache beside
    the chunks (shard_cache): adding a galaxy rewrites its own shard, not its whole chunk."""
    rows = validated[validated[CHUNK] == chunk]
    if rows.empty:
        raise ValueError(f"Chunk {chunk} has no galaxies in the validated catalog; rerun its validation (snakemake -R <the validate rule>)")
    digest = chunk_digests(rows, settings.label_cols)[int(chunk)]
    split_col = None
    if not settings.label_cols:
        rows, split_col = rows.assign(_split=UNLABELLED), "_split"
    cache = ShardCache(Path(out_dir).parent / CACHE_DIR, settings, resize, hash_images)  # shards unchanged since the last write: reused
    manifest = write_shards(
        rows, out_dir, settings, workers=workers, source_col=FILE, split_col=split_col, resize=resize, hash_images=hash_images,
        metadata={"chunk": int(chunk), "rows_digest": digest}, cache=cache,
    )
    log.info("Chunk %d: %d of %d galaxies written to %s", chunk, len(manifest), len(rows), out_dir)
    return manifest


def write_chunk_shards_file(
    validated_path: Path | str, chunk: int, out_dir: Path | str, settings: ShardSettings, resize: ResizeConfig, workers: int = 1,
    hash_images: bool = True, validation_quarantine_path: Path | str | None = None, max_quarantine_fraction: float | None = None,
) -> pd.DataFrame:
    """The write_shards and write_finetune_shards rules: one chunk of a validated catalog into shards. With
    `max_quarantine_fraction`, a catalog whose validation quarantined more than that fraction of its rows stops here,
    before any image is read (CatalogError naming the reasons)."""
    if max_quarantine_fraction is not None:
        quarantine = pd.read_parquet(validation_quarantine_path, columns=["reason"])
        n_validated = pd.read_parquet(validated_path, columns=[ID]).shape[0]
        check_quarantine_fraction(n_validated + len(quarantine), quarantine, max_quarantine_fraction, "the catalog")
    validated = pd.read_parquet(validated_path, filters=[(CHUNK, "==", int(chunk))])
    return write_chunk_shards(validated, chunk, out_dir, settings, resize, workers, hash_images)


def check_chunks(validated: pd.DataFrame, chunk_dirs: list[Path], label_cols: tuple[str, ...] = (), rule: str = "write_finetune_shards") -> None:
    """Every chunk's shards hold exactly the galaxies (and labels) the validated catalog gives them: RuntimeError
    naming the stale or missing chunks (written from another version of the catalog) and the command that rewrites them."""
    expected = chunk_digests(validated, label_cols)
    found = {}
    for chunk_dir in chunk_dirs:
        meta = read_metadata(chunk_dir) if (chunk_dir / METADATA).is_file() else {}
        found[meta.get("chunk", chunk_dir.name)] = meta.get("rows_digest")
    stale = sorted(int(c) for c in set(found) | set(expected) if found.get(c) != expected.get(c))
    if stale:
        targets = " ".join(str(chunk_dirs[0].parent / f"{CHUNK_PREFIX}{c}") for c in stale)
        raise RuntimeError(
            f"Shard chunk(s) {', '.join(map(str, stale))} do not hold the galaxies the validated catalog gives them (written from "
            f"another version of it, or missing); rewrite them: snakemake --force {targets} (snakemake -R {rule} rewrites every chunk)"
        )


def chunk_index(chunk_dirs: list[Path]) -> pd.DataFrame:
    """Per galaxy of the chunks: its split, shard (relative to the chunks' parent folder) and record, or why it has none."""
    frames = []
    for chunk_dir in chunk_dirs:
        written = pd.read_parquet(chunk_dir / MANIFEST, columns=[ID, "split", "shard", RECORD])
        frames.append(written.rename(columns={"split": SHARD_SPLIT}).assign(**{SHARD: chunk_dir.name + "/" + written["shard"], "reason": None, "message": None}))
        frames.append(pd.read_parquet(chunk_dir / UNREADABLE).assign(**{SHARD_SPLIT: None, SHARD: None, RECORD: -1}))
    columns = [ID, SHARD_SPLIT, SHARD, RECORD, "reason", "message"]
    frames = [f[columns] for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def prune_cache(chunk_dirs: list[Path]) -> int:
    """The shard cache beside the chunks pruned to the shards they hold (their shards.json's shard_keys)."""
    keep = {key for d in chunk_dirs for key in (read_metadata(d).get("shard_keys") or {}).values()}
    return prune(chunk_dirs[0].parent / CACHE_DIR, keep)


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


# What designs before chunks of shards left in a catalog's shards folder (one shard folder: the main chain's and a
# survey's <split>/ folders) and beside it (a finetuning catalog's resized PNG copies in images/chunk_<k>/). The
# folder's own files (manifest, catalogs, shards.json) are the chunks' files together now, written afresh.
OLD_SPLIT_FOLDERS = (*SPLITS, UNLABELLED)


def remove_old_layout(shards_root: Path) -> list[Path]:
    """What designs before chunks of shards left, removed (nothing reads it now; a survey's resized copies are as
    large as its shards): split folders in `shards_root` (the chunks' shards are in chunk_<k>/<split>/), and a
    finetuning catalog's resized chunk folders in images/ beside it (the folder too, once empty)."""
    shards_root = Path(shards_root)
    old = [shards_root / name for name in OLD_SPLIT_FOLDERS if (shards_root / name).is_dir()]
    images = shards_root.parent / "images"
    old += sorted(p for p in images.glob(f"{CHUNK_PREFIX}*") if p.is_dir()) if images.is_dir() else []
    for path in old:
        log.info("Removing %s: left by the design before chunks of shards, nothing reads it now", path)
        shutil.rmtree(path)
    if images.is_dir() and old and not any(images.iterdir()):
        images.rmdir()
    return old


def combined_metadata(chunk_dirs: list[Path]) -> dict:
    """shards.json for all chunks together: the settings they share, the counts summed, and each chunk's digest
    under "chunks" (which shards.chunk_names reads); ValueError when chunks were written with other settings."""
    metas = {d.name: read_metadata(d) for d in chunk_dirs}
    by_settings: dict[tuple, list[str]] = {}
    for name, meta in metas.items():
        by_settings.setdefault(tuple((k, meta.get(k)) for k in SHARED_KEYS if k != "label_cols"), []).append(name)
    if len(by_settings) > 1 or len({tuple(m.get("label_cols", [])) for m in metas.values()}) > 1:
        groups = "; ".join(f"{', '.join(names)}: {dict(settings)}" for settings, names in by_settings.items())
        raise ValueError(f"The chunks in {chunk_dirs[0].parent} were written with different settings ({groups}): rewrite them all, "
                         f"snakemake --force {' '.join(str(d) for d in chunk_dirs)}")
    first = next(iter(metas.values()))
    counts = {split: sum(m["counts"][split] for m in metas.values()) for split in (*SPLITS, UNLABELLED)}
    return {**{k: first[k] for k in SHARED_KEYS if k in first}, "counts": counts, "unreadable": sum(m["unreadable"] for m in metas.values()),
            "chunks": {name: m["rows_digest"] for name, m in metas.items()}}


def write_combined(chunk_dirs: list[Path], root: Path) -> dict:
    """The shard files of all chunks together, in `root` beside them: the manifest (shards named
    chunk_<k>/<split>/<file>), the per-split catalogs, the unreadable images, and shards.json (written last); the
    readers in shards.py then take `root` as one folder of shards. Returns the combined shards.json."""
    manifests = []
    for chunk_dir in chunk_dirs:
        manifest = pd.read_parquet(chunk_dir / MANIFEST)
        manifests.append(manifest.assign(shard=chunk_dir.name + "/" + manifest["shard"]))
    atomic_write_table(pd.concat(manifests, ignore_index=True), root / MANIFEST)
    atomic_write_table(pd.concat([pd.read_parquet(d / UNREADABLE) for d in chunk_dirs], ignore_index=True), root / UNREADABLE)
    for split in (*SPLITS, UNLABELLED):
        name = f"{split}_catalog.parquet"
        atomic_write_table(pd.concat([pd.read_parquet(d / name) for d in chunk_dirs], ignore_index=True), root / name)
    metadata = combined_metadata(chunk_dirs)
    write_json(metadata, root / METADATA)
    return metadata


def _ordered(chunk_dirs: list[str]) -> list[Path]:
    """Chunk folders in chunk order; ValueError for none (a validated catalog has at least one galaxy)."""
    dirs = sorted((Path(d) for d in chunk_dirs), key=lambda d: int(d.name.removeprefix(CHUNK_PREFIX)))
    if not dirs:
        raise ValueError("No shard chunks to gather: the validated catalog has no galaxies")
    return dirs


def combine_chunk_files(
    validated_path: Path | str, validation_quarantine_path: Path | str, chunk_dirs: list[str], max_quarantine_fraction: float,
    label_cols: tuple[str, ...] = (), rule: str = "write_shards",
) -> dict:
    """The combine_shards rule: stale chunks refused (`rule` names the chunk rule to rerun), a catalog over
    `max_quarantine_fraction` with its unreadable images refused (CatalogError naming the reasons, before the
    shards' shards.json appears, so no training starts on them), orphaned chunks and the old layout removed, then
    the chunks' shard files together beside them (write_combined); the combined shards.json."""
    dirs = _ordered(chunk_dirs)
    validated = pd.read_parquet(validated_path, columns=[CHUNK, ID, FILE, *label_cols])
    check_chunks(validated, dirs, tuple(label_cols), rule)
    validation_quarantine = pd.read_parquet(validation_quarantine_path, columns=["reason"])
    unreadable = pd.concat([pd.read_parquet(d / UNREADABLE, columns=["reason"]) for d in dirs], ignore_index=True)
    check_quarantine_fraction(len(validated) + len(validation_quarantine), pd.concat([validation_quarantine, unreadable], ignore_index=True),
                              max_quarantine_fraction, "the catalog")
    remove_orphans(dirs)
    remove_old_layout(dirs[0].parent)
    prune_cache(dirs)
    return write_combined(dirs, dirs[0].parent)


def gather_chunk_files(
    validated_path: Path | str,
    validation_quarantine_path: Path | str,
    chunk_dirs: list[str],
    ready_path: Path | str,
    quarantine_path: Path | str,
    accounting_path: Path | str,
    max_quarantine_fraction: float,
    label_cols: tuple[str, ...] = (),
    rule: str = "write_finetune_shards",
    shard_files: bool = True,
) -> dict:
    """The gather_images and gather_finetune_images rules: stale chunks refused (`rule` names the chunk rule to
    rerun), then the ready catalog (each galaxy with its split, shard and record), the full quarantine table
    (validation's rows and unreadable images) and the row accounting; with `shard_files` (a finetuning catalog: the
    main chain's combine_shards rule does this apart, so that a new quarantine limit re-gathers without retraining),
    orphaned chunks and the old layout removed and the chunks' shard files together beside them (write_combined).
    A catalog over `max_quarantine_fraction` with its unreadable images stops before any of that."""
    dirs = _ordered(chunk_dirs)
    validated = pd.read_parquet(validated_path)
    validation_quarantine = pd.read_parquet(validation_quarantine_path)
    check_chunks(validated, dirs, tuple(label_cols), rule)
    ready, quarantine = gather_index(validated, validation_quarantine, chunk_index(dirs), max_quarantine_fraction, f"snakemake -R {rule}")
    ready[RECORD] = ready[RECORD].astype("int64")
    if shard_files:
        remove_orphans(dirs)
        remove_old_layout(dirs[0].parent)
        prune_cache(dirs)
        write_combined(dirs, dirs[0].parent)
    return write_gathered(validated, validation_quarantine, ready, quarantine, ready_path, quarantine_path, accounting_path)

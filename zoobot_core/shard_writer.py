"""The parallel shard writer: worker processes read, resize, encode and write each part's images straight into
its shard (no pixels pass between processes), the main process joins cut shards and writes the manifest, the
per-split catalogs, the unreadable images and shards.json; the whole folder appears at once."""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import mmap
import multiprocessing
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core.catalog import ID, LABELLED
from zoobot_core.fits_images import BadImage
from zoobot_core.images import RESIZED, UNREADABLE_ERRORS, ResizeConfig, load_resized, unreadable_reason
from zoobot_core.io import atomic_dir, atomic_write_table, file_sha256, write_json
from zoobot_core.shard_cache import ShardCache
from zoobot_core.shard_plan import Part, part_file, plan_parts, shard_groups
from zoobot_core.shards import MANIFEST, METADATA, SPLITS, UNLABELLED, UNREADABLE, ShardSettings
from zoobot_core.splits import assign_splits, hash_fraction
from zoobot_core.tfrecord import ExampleLayout, TFRecordWriter

log = logging.getLogger(__name__)


def _image_bytes(path: str, read_encoded: Callable[[str], bytes], raw_size: int | None) -> bytes:
    """What a shard stores for one image: its encoded bytes, or its decoded uint8 pixels when raw_size is set."""
    encoded = read_encoded(path)
    return encoded if raw_size is None else _raw_pixels(encoded, raw_size)


def resized_bytes(path: str, config: ResizeConfig, raw: bool, hash_image: bool = True) -> tuple[bytes, str | None]:
    """One source image resized as `config` says (images.load_rgb): its uint8 RGB pixels (raw) or PNG bytes
    (png_compress_level), what the survey's shards store, made straight from the catalog's file; and, with
    `hash_image` (provenance.hash_images), the file's SHA-256, taken here where the image is read anyway (else None)."""
    rgb = load_resized(path, config)
    checksum = file_sha256(path) if hash_image else None  # the file is in the page cache now: no second trip to the disk
    if raw:
        return rgb.tobytes(), checksum
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=config.png_compress_level)
    return buffer.getvalue(), checksum


def _load_or_reason(load: Callable[[str], bytes | tuple[bytes, str]], path: str) -> tuple[bytes | None, str | None, str | None, str | None]:
    """(bytes, source SHA-256 or None, None, None), or (None, None, quarantine reason, message) for an image that cannot be used."""
    try:
        loaded = load(path)
    except BadImage as err:
        return None, None, err.reason, str(err)
    except UNREADABLE_ERRORS as err:  # the file system failing (EIO, ESTALE...) raises MachineError: stop, quarantine nothing
        return (None, None, *unreadable_reason(err, f"reading {path} into a shard"))
    return (*loaded, None, None) if isinstance(loaded, tuple) else (loaded, None, None, None)


def _load_or_raise(load: Callable[[str], bytes], path: str) -> tuple[bytes, None, None, None]:
    """(bytes, None, None, None); an unreadable file raises, naming it."""
    try:
        return load(path), None, None, None
    except UNREADABLE_ERRORS as err:
        raise ValueError(f"Cannot read {path} into a shard ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class PartResult:
    written: list[tuple[str, str | None]]  # (id_str, source file SHA-256 or None), in record order
    failed: list[dict]  # unreadable images: id_str, reason, message
    sha256: str | None  # the shard's checksum, for a one-part shard that holds any record


def _write_part(root: Path, loader: Callable[[str], tuple], part: Part) -> PartResult:
    """Read, resize and encode one part's images and write their records (a worker's whole job: the pixels never
    travel between processes, and a one-part shard's SHA-256 is taken as it is written). No file for no record."""
    layout = ExampleLayout(("id_str", "matrix"), part.label_cols)
    writer: TFRecordWriter | None = None
    written: list[tuple[str, str | None]] = []
    failed: list[dict] = []
    try:
        for id_str, source, labels in zip(part.ids, part.sources, part.labels):
            image, checksum, reason, message = loader(source)
            if image is None:
                failed.append({ID: id_str, "reason": reason, "message": message})
                continue
            if writer is None:
                writer = TFRecordWriter(root / part.file_name, checksum=part.n_parts == 1)
            writer.write_pieces(layout.pieces({"id_str": id_str.encode(), "matrix": image}, labels.tolist()))
            written.append((id_str, checksum))
    finally:
        if writer is not None:
            writer.close()
    return PartResult(written, failed, writer.sha256 if writer is not None and part.n_parts == 1 else None)


def _join_parts(root: Path, shard: str, n_parts: int) -> str | None:
    """Append a shard's later parts (those that hold records) to what its first part wrote, in order, and take the
    whole shard's SHA-256 (read in place, through mmap); the part files are deleted. Only the later parts are
    copied: copying is most of a join's cost. None when no part holds a record (no shard file)."""
    path = root / shard
    later = [p for k in range(1, n_parts) if (p := root / part_file(shard, k)).exists()]
    if not path.exists() and not later:
        return None
    digest = hashlib.sha256()
    with open(path, "ab+") as out:
        if path.stat().st_size:  # the first part's records (none if all its images were unreadable)
            with mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as view:
                digest.update(view)
        for part in later:
            with open(part, "rb") as f:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:  # parts hold >= 1 record: never empty
                    digest.update(view)
                    out.write(view)
            part.unlink()
    return digest.hexdigest()


def _run_parts(pool: ProcessPoolExecutor | None, write: Callable[[Part], PartResult], parts: list[Part], workers: int) -> Iterator[tuple[Part, PartResult]]:
    """(part, result) as parts finish, largest parts started first; with a pool at most workers + 2 in flight, so
    memory stays bounded however many shards. An error cancels the parts not yet started (the pool has already
    started about one per worker plus one, which finish before the error reaches the caller: at worst a shard each)."""
    order = sorted(parts, key=lambda p: -len(p.ids))  # stable: equal parts in shard order
    if pool is None:
        for part in order:
            yield part, write(part)
        return
    queue = iter(order)
    pending: dict = {}
    try:
        for part in itertools.islice(queue, workers + 2):
            pending[pool.submit(write, part)] = part
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                part = pending.pop(future)
                yield part, future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(write, nxt)] = nxt
    finally:
        for future in pending:
            future.cancel()


def write_shards(
    catalog: pd.DataFrame,
    shard_dir: Path | str,
    settings: ShardSettings,
    encoded_bytes: Callable[[str], bytes] | None = None,
    workers: int = 1,
    source_col: str = RESIZED,
    split_col: str | None = None,
    resize: ResizeConfig | None = None,
    check_unreadable: Callable[[pd.DataFrame], None] | None = None,
    hash_images: bool = True,
    metadata: dict | None = None,
    cache: ShardCache | None = None,
) -> pd.DataFrame:
    """Write catalog galaxies into shard_dir/<split>/<split>_NNNNN.tfrecord; return the manifest.

    Labelled galaxies go to train/val/test by hash, unlabelled ones to 'unlabelled' (or, with
    `split_col`, to the split that column names: train, val, test or unlabelled). Within a
    split, galaxies are ordered by their hash (a seeded, rerun-stable shuffle). Images are, in order of precedence:
    the files in `source_col` resized as `resize` says, straight into the shards (resized_bytes: the
    workflow's path, one pass over the survey); `encoded_bytes(path)` (a module-level function or
    functools.partial when workers > 1); or the encoded bytes of already-resized files in `source_col`.
    With decoding to do, `workers` processes each read, resize, encode and write whole shards (or parts of a shard,
    joined here, when there are too few shards to keep them all busy): no pixels pass between processes. The bytes
    written do not depend on `workers`.

    With `resize`, an image that cannot be read is not written: its id, reason and message go to
    `unreadable.parquet` beside the shards (gather_images quarantines it) and its shard is one record short (each
    shard's galaxies are fixed before any image is read, so no other galaxy moves); `check_unreadable(table)` may
    refuse the lot before anything appears. Without `resize` (shards of files already checked), an unreadable file
    is an error. With `resize` and `hash_images` (provenance.hash_images), the manifest's source_sha256 holds each
    source image's SHA-256; without, no image is hashed and the column is left out. The whole directory appears at
    once when writing succeeds. `metadata` (e.g. a catalog chunk's number and rows digest) joins shards.json.

    Shards are hash buckets of each split (shard_plan.shard_groups: about shard_size galaxies each), so adding a
    galaxy changes one shard; with `cache` (shard_cache.ShardCache), a shard whose galaxies and files are those of a
    shard written before is linked from the cache instead of written, and every shard written whole is kept there
    (shards.json lists each shard's key under shard_keys).
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
    raw = settings.image_encoding == "raw"
    if resize is not None:
        if resize.size != settings.size:
            raise ValueError(f"Resize size {resize.size} differs from the shards' size {settings.size}")
        load = partial(resized_bytes, config=resize, raw=raw, hash_image=hash_images)
    else:
        load = partial(_image_bytes, read_encoded=encoded_bytes or _read_bytes, raw_size=settings.size if raw else None)
    decoding = raw or encoded_bytes is not None or resize is not None
    loader = partial(_load_or_reason, load) if resize is not None else partial(_load_or_raise, load)
    with atomic_dir(shard_dir) as tmp, _image_pool(workers if decoding else 1) as pool:
        for split in (*SPLITS, UNLABELLED):
            (tmp / split).mkdir()
        groups = shard_groups(df, settings, source_col)
        reused = {g.shard: record for g in groups if cache is not None and (record := cache.fetch(g, tmp)) is not None}
        todo = [g for g in groups if g.shard not in reused]
        if reused:
            log.info("Reused %d of %d shards (%d galaxies) whose galaxies and files are unchanged, from %s", len(reused), len(groups),
                     sum(len(r["written"]) for r in reused.values()), cache.folder)
        parts = plan_parts(todo, max(workers, 1) if pool is not None else 1)
        results: dict[tuple[str, int], PartResult] = {}
        unfinished = Counter(part.shard for part in parts)
        checksums: dict[str, str | None] = {shard: record["sha256"] for shard, record in reused.items()}
        n_todo = sum(len(g.ids) for g in todo)
        progress = tqdm(total=n_todo, desc="writing shards", unit="galaxy", mininterval=10, disable=n_todo < 1000)
        with closing(_run_parts(pool, partial(_write_part, tmp, loader), parts, max(workers, 1))) as finished:
            for part, result in finished:
                results[part.shard, part.part] = result
                for row in result.failed:
                    log.warning("Cannot read image of %s: %s", row[ID], row["message"])
                unfinished[part.shard] -= 1
                if not unfinished[part.shard]:
                    checksums[part.shard] = result.sha256 if part.n_parts == 1 else _join_parts(tmp, part.shard, part.n_parts)
                progress.update(len(part.ids))
        progress.close()
        failed = [row for part in parts for row in results[part.shard, part.part].failed]
        written = {shard: [r for part in shard_parts for r in results[part.shard, part.part].written]
                   for shard, shard_parts in itertools.groupby(parts, key=lambda part: part.shard)}
        if cache is not None:  # shards with every galaxy written (an unreadable image is read again next time)
            for g in todo:
                if len(written.get(g.shard, [])) == len(g.ids):
                    cache.store(g, tmp / g.shard, written[g.shard], checksums[g.shard])
        manifest_rows = []
        for g in groups:
            records = [tuple(r) for r in reused[g.shard]["written"]] if g.shard in reused else written.get(g.shard, [])
            manifest_rows += [
                {ID: i, "split": g.shard.split("/")[0], "shard": g.shard, "index_in_shard": k, "shard_sha256": checksums.get(g.shard), "source_sha256": source}
                for k, (i, source) in enumerate(records)
            ]
        manifest = pd.DataFrame(manifest_rows, columns=[ID, "split", "shard", "index_in_shard", "shard_sha256", "source_sha256"])
        if manifest["source_sha256"].isna().all():  # only the workflow's path reads the catalog's own files
            manifest = manifest.drop(columns="source_sha256")
        atomic_write_table(manifest, tmp / MANIFEST)
        unreadable = pd.DataFrame(failed, columns=[ID, "reason", "message"])
        if check_unreadable is not None:
            check_unreadable(unreadable)
        atomic_write_table(unreadable, tmp / UNREADABLE)
        in_shards = df[~df[ID].isin(unreadable[ID])]
        for split in (*SPLITS, UNLABELLED):
            keep = [c for c in in_shards.columns if c not in ("_order",)]
            atomic_write_table(in_shards.loc[in_shards["split"] == split, keep].reset_index(drop=True), tmp / f"{split}_catalog.parquet")
        metadata = {
            "size": settings.size,
            "channels": settings.channels,
            "label_cols": list(settings.label_cols),
            "seed": settings.seed,
            "train_fraction": settings.train_fraction,
            "val_fraction": settings.val_fraction,
            "shard_size": settings.shard_size,
            "image_encoding": settings.image_encoding,
            "counts": {s: int((in_shards["split"] == s).sum()) for s in (*SPLITS, UNLABELLED)},
            "unreadable": len(unreadable),
            **({"shard_keys": dict(sorted(cache.used.items()))} if cache is not None else {}),
            **(metadata or {}),
        }
        write_json(metadata, tmp / METADATA)
    log.info("Wrote shards to %s: %s; %d image(s) unreadable", shard_dir, metadata["counts"], len(unreadable))
    return manifest


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


@contextmanager
def _image_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes that read, decode and write images into shards (none for workers <= 1)."""
    if workers <= 1:
        yield None
        return
    # fork (fast, and a Snakemake script cannot be re-imported by spawned workers) unless this process already
    # runs TensorFlow, whose threads do not survive a fork (writing shards itself never imports it)
    method = "fork" if "tensorflow" not in sys.modules and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        yield pool


def _raw_pixels(encoded: bytes, size: int) -> bytes:
    """Decoded uint8 RGB pixels of an encoded image, checked against the shard size."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if pixels.shape != (size, size, 3):
        raise ValueError(f"Image of shape {pixels.shape} cannot go into {size} px raw shards; resize it first")
    return pixels.tobytes()

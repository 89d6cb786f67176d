"""Deterministic TFRecord shards: split by a hash of (seed, id), fixed order, no timestamps, atomic writes."""

from __future__ import annotations

import hashlib
import heapq
import io
import itertools
import json
import logging
import mmap
import multiprocessing
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core.catalog import FILE, ID, LABELLED
from zoobot_core.fits_images import BadImage
from zoobot_core.images import RESIZED, UNREADABLE_ERRORS, ResizeConfig, load_resized, unreadable_reason
from zoobot_core.io import atomic_dir, atomic_write_table, file_sha256, write_json
from zoobot_core.tfrecord import ExampleLayout, TFRecordWriter

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"
MANIFEST = "manifest.parquet"
METADATA = "shards.json"
UNREADABLE = "unreadable.parquet"
SHARD_SPLIT = "shard_split"  # ready.parquet's column naming each galaxy's split (a catalog may have its own "split")


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
class _Part:
    """One task for a worker: consecutive galaxies of one shard (all of them when the shard is one part). A shard's
    members are fixed before any image is read (shard_size galaxies of its split's order), so an unreadable image
    leaves its own shard one record short and moves no other galaxy."""

    shard: str  # <split>/<split>_NNNNN.tfrecord
    part: int
    n_parts: int
    ids: list[str]
    sources: list[str]
    labels: np.ndarray  # (galaxies, label columns)
    label_cols: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """The shard itself for a shard's first (or only) part, else a part file (not *.tfrecord) that the main
        process appends to the shard."""
        return self.shard if self.part == 0 else _part_file(self.shard, self.part)


def _part_file(shard: str, part: int) -> str:
    """Where a shard's later part (part >= 1) is written until the main process joins it: not a *.tfrecord name."""
    return f"{shard}.part{part:04d}"


@dataclass(frozen=True)
class _PartResult:
    written: list[tuple[str, str | None]]  # (id_str, source file SHA-256 or None), in record order
    failed: list[dict]  # unreadable images: id_str, reason, message
    sha256: str | None  # the shard's checksum, for a one-part shard that holds any record


def _write_part(root: Path, loader: Callable[[str], tuple], part: _Part) -> _PartResult:
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
    return _PartResult(written, failed, writer.sha256 if writer is not None and part.n_parts == 1 else None)


def _join_parts(root: Path, shard: str, n_parts: int) -> str | None:
    """Append a shard's later parts (those that hold records) to what its first part wrote, in order, and take the
    whole shard's SHA-256 (read in place, through mmap); the part files are deleted. Only the later parts are
    copied: copying is most of a join's cost. None when no part holds a record (no shard file)."""
    path = root / shard
    later = [p for k in range(1, n_parts) if (p := root / _part_file(shard, k)).exists()]
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


MIN_PART = 64  # galaxies: a shard is cut into no parts smaller than this (each costs a task, a file and a join)
JOIN_COST = 0.25  # the main process's time to append and hash one galaxy of a shard in parts, in a worker's time
# per galaxy (measured ~0.2 at JPEG -> 224 px, where a galaxy's record is big and its decode cheap; less elsewhere)


def parts_per_shard(shard_sizes: list[int], workers: int) -> list[int]:
    """Into how many parts to cut each shard for `workers` processes, each taking the largest part left. Greedily,
    the shards of one size (and parts so far) are cut into twice their parts while that brings the estimated finish
    forward: the busiest
    worker's load (in galaxies) plus the main process's joining (JOIN_COST a galaxy of every shard in parts), which
    takes the workers' cores, and never less than the joining alone (one process does it). All 1 when whole shards
    share out evenly (each written by one worker, nothing to join); a few cut where they do not (with 4,096-galaxy
    shards, 3,000 galaxies make one 2,381-galaxy train shard; with 512, seven shards of which the last two or three
    are cut). A shard is cut into no parts under MIN_PART galaxies (_cuts)."""
    counts = [1] * len(shard_sizes)
    if workers <= 1 or not shard_sizes:
        return counts
    finish = _estimated_finish(shard_sizes, counts, workers)
    while True:
        trials = []  # shards of the same size and parts are alike: each such group is cut together
        for group in sorted(set(zip(shard_sizes, counts))):
            size, count = group
            if size // (2 * count) >= MIN_PART:
                trial = [2 * c if (s, c) == group else c for s, c in zip(shard_sizes, counts)]
                trials.append((_estimated_finish(shard_sizes, trial, workers), trial))
        if not trials:
            return counts
        best, trial = min(trials, key=lambda t: t[0])
        if best >= finish:
            return counts
        finish, counts = best, trial


def _estimated_finish(shard_sizes: list[int], counts: list[int], workers: int) -> float:
    """When the last of `workers` processes would finish, in galaxies, with each shard cut into `counts` parts:
    largest part first to the least-loaded worker, plus the main process's joining (parts_per_shard)."""
    loads = [0] * workers  # a heap
    cuts = [_cuts(size, count) for size, count in zip(shard_sizes, counts)]
    for part in sorted((b - a for shard in cuts for a, b in shard), reverse=True):
        heapq.heapreplace(loads, loads[0] + part)
    joined = JOIN_COST * sum(size for size, shard in zip(shard_sizes, cuts) if len(shard) > 1)
    return max(max(loads) + joined / workers, joined)


def _cuts(length: int, n: int) -> list[tuple[int, int]]:
    """[start, stop) of a shard's parts: n nearly equal consecutive ranges of its `length` galaxies, fewer where
    that would make parts under MIN_PART (one part for a shard under 2 * MIN_PART)."""
    count = max(1, min(n, length // MIN_PART))
    bounds = np.linspace(0, length, count + 1).round().astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def _run_parts(pool: ProcessPoolExecutor | None, write: Callable[[_Part], _PartResult], parts: list[_Part], workers: int) -> Iterator[tuple[_Part, _PartResult]]:
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


def _plan_parts(df: pd.DataFrame, settings: ShardSettings, source_col: str, workers: int) -> list[_Part]:
    """Every shard's galaxies (shard_size of each split's sorted rows, in turn), each shard cut into the parts
    parts_per_shard gives it; in shard order."""
    groups = []
    for split in (*SPLITS, UNLABELLED):
        rows = df[df["split"] == split]
        label_cols = tuple(settings.label_cols) if split != UNLABELLED else ()
        labels = rows[list(label_cols)].to_numpy(dtype=np.float64) if label_cols else np.empty((len(rows), 0))
        ids, sources = rows[ID].astype(str).tolist(), rows[source_col].astype(str).tolist()
        for index, start in enumerate(range(0, len(rows), settings.shard_size)):
            stop = start + settings.shard_size
            groups.append((f"{split}/{split}_{index:05d}.tfrecord", ids[start:stop], sources[start:stop], labels[start:stop], label_cols))
    counts = parts_per_shard([len(ids) for _, ids, _, _, _ in groups], workers)
    parts = []
    for (shard, ids, sources, labels, label_cols), n in zip(groups, counts):
        cuts = _cuts(len(ids), n)
        parts += [_Part(shard, k, len(cuts), ids[a:b], sources[a:b], labels[a:b], label_cols) for k, (a, b) in enumerate(cuts)]
    return parts


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
        parts = _plan_parts(df, settings, source_col, max(workers, 1) if pool is not None else 1)
        results: dict[tuple[str, int], _PartResult] = {}
        unfinished = Counter(part.shard for part in parts)
        checksums: dict[str, str | None] = {}
        progress = tqdm(total=len(df), desc="writing shards", unit="galaxy", mininterval=10, disable=len(df) < 1000)
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
        manifest_rows = []
        for shard, shard_parts in itertools.groupby(parts, key=lambda part: part.shard):
            records = [r for part in shard_parts for r in results[part.shard, part.part].written]
            manifest_rows += [
                {ID: i, "split": shard.split("/")[0], "shard": shard, "index_in_shard": k, "shard_sha256": checksums[shard], "source_sha256": source}
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
        written = df[~df[ID].isin(unreadable[ID])]
        for split in (*SPLITS, UNLABELLED):
            keep = [c for c in written.columns if c not in ("_order",)]
            atomic_write_table(written.loc[written["split"] == split, keep].reset_index(drop=True), tmp / f"{split}_catalog.parquet")
        metadata = {
            "size": settings.size,
            "channels": settings.channels,
            "label_cols": list(settings.label_cols),
            "seed": settings.seed,
            "train_fraction": settings.train_fraction,
            "val_fraction": settings.val_fraction,
            "shard_size": settings.shard_size,
            "image_encoding": settings.image_encoding,
            "counts": {s: int((written["split"] == s).sum()) for s in (*SPLITS, UNLABELLED)},
            "unreadable": len(unreadable),
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


def _refuse_unreadable(unreadable: pd.DataFrame) -> None:
    """The seed API's policy: an image that cannot be used stops prepare_shards, naming every such file's galaxy and reason."""
    if len(unreadable):
        listed = "; ".join(f"{r[ID]}: {r['reason']} ({r['message']})" for r in unreadable.head(5).to_dict("records"))
        raise ValueError(f"{len(unreadable)} image(s) cannot go into shards: {listed}. Fix or drop those rows of the catalog")


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
        # the workflow's own image path (resized_bytes: its resize, FITS handling and quarantine reasons), PNG level 1
        resize = ResizeConfig(size=self.size, png_compress_level=1)
        return write_shards(catalog, self.shard_dir, settings, source_col=FILE, resize=resize, check_unreadable=_refuse_unreadable, hash_images=False)


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

"""Atomic file writing and table reading shared by every stage, so interrupted jobs leave no half-written outputs."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


TEMPORARY = "tmp"  # the mark of a writer's temporary, file or folder, in its name: .NAME.RANDOM.tmp[SUFFIX]
SET_ASIDE = "old"  # the mark of a folder atomic_dir moved aside to put the new one in its place: .NAME.RANDOM.old
# temporaries of earlier versions, named .NAME.RANDOM.keras and .NAME.RANDOM.weights.h5 (tempfile's 8 random characters)
_EARLIER_TEMPORARY = r"[a-z0-9_]{8}(?:\.keras|\.weights\.h5)"


def _sibling(path: Path | str, mark: str = TEMPORARY, suffix: str = "", directory: bool = False) -> Path:
    """Create an empty file (or folder) beside `path`, named .NAME.RANDOM.MARK[SUFFIX]: the one naming scheme of every
    temporary the package writes, so that `_siblings` finds what a killed writer left, whatever its suffix."""
    path = Path(path)
    prefix, suffix = f".{path.name}.", f".{mark}{suffix}"
    if directory:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=suffix))
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(name)


def _siblings(path: Path, mark: str) -> list[Path]:
    """What `_sibling(path, mark, ...)` made beside `path`, whatever the suffix; not another output's (a name that only
    starts with ours: tempfile's random part has no dots)."""
    earlier = f"|{_EARLIER_TEMPORARY}" if mark == TEMPORARY else ""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:[a-z0-9_]+\.{mark}(?:\.[^/]*)?{earlier})")
    return sorted(p for p in path.parent.glob(f".{glob.escape(path.name)}.*") if pattern.fullmatch(p.name))


def _remove(path: Path) -> None:
    """Remove a file or a folder (not a link's target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` (ending in `suffix`, for writers that check it); rename it
    onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)  # a killed earlier writer's temporary (a long prediction's can be gigabytes)
    tmp_path = _sibling(path, suffix=suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove_stale(path: Path) -> None:
    """Remove temporaries beside `path` that an earlier writer of it left when it was killed (SIGKILL: no cleanup ran).
    Safe because one job writes one output at a time (Snakemake's rule)."""
    for stale in _siblings(path, TEMPORARY):
        log.info("Removing %s, left by an interrupted earlier write", stale)
        _remove(stale)


def _recover_set_aside(path: Path) -> None:
    """Undo what a killed atomic_dir commit left: put the old folder it had moved aside back if nothing replaced it,
    else remove it. A kill at any step of the commit thus leaves the old folder or the new one at `path`, whole."""
    set_aside = _siblings(path, SET_ASIDE)
    if set_aside and not path.exists() and not path.is_symlink():
        # the only one unless something else moved folders here; the newest move (rename sets ctime) is the last old folder
        restored = max(set_aside, key=lambda p: p.stat().st_ctime)
        log.info("Restoring %s from %s, moved aside by an interrupted earlier write", path, restored)
        os.replace(restored, path)
        set_aside.remove(restored)
    for stale in set_aside:
        log.info("Removing %s, the old folder an interrupted earlier write had replaced", stale)
        _remove(stale)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds: the old folder is
    moved aside, the new one moved in, then the old one removed. What an earlier, killed writer of `path` left
    behind (temporaries, a folder moved aside) is cleaned up, or put back, first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover_set_aside(path)
    _remove_stale(path)
    tmp = _sibling(path, directory=True)
    try:
        yield tmp
        old = None
        if path.exists() or path.is_symlink():
            # onto the empty folder (or file) just made: a name no one else uses
            old = _sibling(path, SET_ASIDE, directory=path.is_dir() and not path.is_symlink())
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_table(df: pd.DataFrame, path: Path | str) -> None:
    """Write a DataFrame as Parquet or CSV (by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)


def _json_safe(value):
    """NaN and infinities (not JSON) as null, recursively; numpy scalars as Python numbers."""
    import math

    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(data: dict, path: Path | str) -> None:
    """Write a JSON file atomically, keys sorted and indented (stable across reruns, readable in a diff);
    NaN and infinities become null, so strict readers (jq, browsers) accept it."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _as_text(column: pd.Series, name: str, path: Path) -> pd.Series:
    """A Parquet column as text, exactly: integers keep every digit; floats only if they hold whole numbers below
    2**53 (beyond that, digits were already lost when the file was written, and the error says so)."""
    import numpy as np

    if pd.api.types.is_float_dtype(column):
        values = column.dropna().to_numpy(dtype=float)
        if len(values) and (np.abs(values).max() >= 2**53 or (values != np.round(values)).any()):
            raise ValueError(
                f"Column {name!r} of {path} is stored as floating point, so ids such as 19-digit SDSS objids have lost "
                f"digits (e.g. {float(values[0])!r}); write it as integers or text (pandas: df[{name!r}].astype('string'))"
            )
        column = column.astype("Int64")
    return column.astype("string")


def printable(value: object) -> object:
    """A string read with surrogateescape, its undecodable bytes written as \\xNN (storable in Parquet); others as they are."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def read_table(path: Path | str, text_columns: tuple[str, ...] = (), keep_bytes: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet table by its suffix; `text_columns` (ids, paths) are read as text, never as numbers,
    so 19-digit object ids keep every digit and '007' stays '007'. In a CSV, bytes that are not UTF-8 are written
    as \\xNN, except in the `keep_bytes` columns (paths), which keep them (as surrogates) for the caller to judge."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
        for name in text_columns:
            if name in table.columns:
                table[name] = _as_text(table[name], name, path)
        return table
    if path.suffix.lower() in (".csv", ".txt"):
        try:
            return pd.read_csv(path, keep_default_na=True, dtype={name: "string" for name in text_columns})
        except UnicodeDecodeError:
            pass
        # bytes that are not UTF-8 (a name from another file system's encoding): read again keeping them as surrogates
        # (Python strings can hold them; Arrow's cannot), then escape them outside the keep_bytes columns
        with pd.option_context("future.infer_string", False):  # text as Python objects, not Arrow strings
            table = pd.read_csv(path, keep_default_na=True, dtype={name: object for name in text_columns}, encoding_errors="surrogateescape")
        for name in table.columns:
            if table[name].dtype == object:
                if name in keep_bytes:
                    table[name] = table[name].astype(pd.StringDtype("python"))
                else:
                    table[name] = table[name].map(printable, na_action="ignore").astype("string")
        return table
    raise ValueError(f"Catalog {path} must be .csv or .parquet (got suffix {path.suffix!r}); convert it or rename it")


def streamed_parquet(path: Path | str):
    """A pyarrow ParquetFile to read batch by batch in bounded memory. pyarrow pre-buffers by default, and a reader
    that goes through the file batch by batch then keeps every row group read so far (memory grew with the file:
    266 -> 388 MB over 160,000 galaxies' samples); every streamed reader opens its file here."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False)


def setup_logging(log_file: Path | str | None = None, level: int = logging.INFO) -> None:
    """Send log records to `log_file` (a rule's log) and stderr, with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)

    def log_uncaught(kind, value, traceback) -> None:
        logging.getLogger("zoobot_core").critical("Failed: %s", value, exc_info=(kind, value, traceback))

    sys.excepthook = log_uncaught
    if "SLURM_JOB_ID" in os.environ:  # which job and which GPUs, for anyone reading a cluster run's logs
        logging.getLogger("zoobot_core").info(
            "SLURM job %s on %s; CPUs per task %s; CUDA_VISIBLE_DEVICES=%s",
            os.environ["SLURM_JOB_ID"], os.environ.get("SLURMD_NODENAME", "?"), os.environ.get("SLURM_CPUS_PER_TASK", "?"),
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        )


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

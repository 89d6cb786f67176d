"""Catalog validation: every input row ends up either in the validated table or in quarantine with a reason."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.io import atomic_write_table, printable, read_table

log = logging.getLogger(__name__)

ID, FILE, LABELLED, CHUNK = "id_str", "file_loc", "labelled", "chunk"
QUARANTINE_COLUMNS = ["row", ID, FILE, "stage", "reason", "message"]

# reason code -> what the user should do about it
REASONS = {
    "missing_id": "give every row a non-empty id",
    "duplicate_id": "ids must be unique; every row sharing an id is quarantined, keep one",
    "missing_path": "give every row an image path",
    "path_outside_root": "image paths must lie under the image root; fix the path or image_root",
    "missing_file": "the image file does not exist; fix the path or image_root",
    "empty_file": "the image file is empty (0 bytes); re-download it",
    "bad_path": "the path cannot be used as written (a symlink loop, too long, not UTF-8); fix the path or the file",
    "not_a_file": "the path is not a regular file (a directory, fifo or device); point it at the image file",
    "unreadable_file": "this process may not read the file; fix its permissions",
    "unreadable_image": "the file could not be decoded as an image; re-download or re-export it",
    "fits_missing_hdu": "the FITS file has no image in the HDU asked for; set images.fits.hdu or re-download it",
    "fits_bands": "the FITS image does not have the bands asked for; set images.fits.bands (3 planes as R, G, B, or 1)",
    "fits_nonfinite": "too many NaN/inf pixels; re-download it or raise images.fits.max_nonfinite_fraction",
    "blank_image": "every pixel has the same value (e.g. all zero: off the survey footprint); re-download it or drop the row",
    "missing_labels": "this row has no labels and allow_unlabelled is false",
    "partial_labels": "some but not all label columns are empty; fill them or blank them all (unlabelled)",
    "invalid_votes": "vote counts must be non-negative integers",
    "invalid_label": "the label must be a finite number",
    "fractional_label": "class labels must be whole numbers; to turn a score into classes set a label threshold (finetune.label_threshold)",
    "label_out_of_range": "the label is not one of the task's classes; fix it or change the task's number of classes",
    "votes_exceed_total": "an answer has more votes than its question's total-votes column; fix the counts",
}


class CatalogError(ValueError):
    """The catalog as a whole cannot be used (missing columns, empty, too many bad rows)."""


@dataclass(frozen=True)
class CatalogConfig:
    """How to read a user's catalog: which columns are the id, the image path and the labels."""

    id_column: str = ID
    file_column: str = FILE
    label_cols: tuple[str, ...] = ()
    # 'votes': non-negative integer counts; 'values': any finite number (e.g. fractions);
    # 'classes': class numbers 0..n_classes-1 (after label_threshold, if set, turns scores into 0/1)
    label_kind: str = "votes"
    n_classes: int = 2
    label_threshold: float | None = None  # 'classes': a label >= this becomes 1, below it 0
    image_root: str | None = None  # relative paths resolve here; default: the catalog's folder
    allow_unlabelled: bool = True
    max_quarantine_fraction: float = 0.05
    chunk_size: int = 500
    max_chunks: int = 16  # at most this many chunks (jobs) however large the catalog
    # (total-votes column, its answers' columns) per question; checked where the catalog has the total column
    question_totals: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _quarantine_rows(df: pd.DataFrame, mask: pd.Series, reason: str, message: str | pd.Series) -> pd.DataFrame:
    """The quarantine table's rows for `mask`; the one place paths become printable (\\xNN for bytes not UTF-8)."""
    rows = df.loc[mask, ["row", ID, FILE]].copy()
    rows[FILE] = pd.array([printable(p) for p in rows[FILE]], dtype="string")  # before inspection a path keeps raw bytes
    rows["stage"] = "validate"
    rows["reason"] = reason
    rows["message"] = message[mask] if isinstance(message, pd.Series) else message
    return rows


def _class_labels(df: pd.DataFrame, labels: pd.DataFrame, config: CatalogConfig, reject) -> pd.DataFrame:
    """Class numbers 0..n_classes-1: scores binarised at label_threshold if set; fractional and
    out-of-range labels rejected (quarantined) with the offending value in the message."""
    if config.label_threshold is not None:
        labels = labels.where(labels.isna(), (labels >= config.label_threshold).astype(float))
    values = labels.to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(values)
    for reason, bad_values, what in (
        ("fractional_label", finite & (values != np.round(values)), "is not a whole class number"),
        ("label_out_of_range", finite & ((values < 0) | (values >= config.n_classes)), f"is outside the classes 0..{config.n_classes - 1}"),
    ):
        rows = bad_values.any(axis=1)
        if rows.any():
            column = np.asarray(config.label_cols)[bad_values.argmax(axis=1)]
            text = [f"{c!r} is {v:g}, which {what}; {REASONS[reason]}" for c, v in zip(column, values[np.arange(len(values)), bad_values.argmax(axis=1)])]
            reject(pd.Series(rows, index=df.index), reason, pd.Series(text, index=df.index))
    return labels


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def inspect_image_path(path: str, roots: tuple[Path, ...]) -> tuple[str | None, str, str]:
    """(quarantine reason or None, message, absolute path) for one catalog path, never raising.

    The path must lie under an image root as written, without following symlinks (so links into a content
    store such as DVC or git-annex are accepted), then stat (following them) must find a readable, non-empty
    regular file. Symlink loops, directories, fifos, devices, names too long and bytes that are not UTF-8 are
    reasons, not crashes.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = printable(path)
        return "bad_path", f"path {shown} is not valid UTF-8; {REASONS['bad_path']}", shown
    candidate = Path(path) if Path(path).is_absolute() else roots[0] / path
    absolute = Path(os.path.normpath(candidate))
    if not any(absolute == root or root in absolute.parents for root in roots):
        return "path_outside_root", f"path escapes image root {roots[0]}; {REASONS['path_outside_root']}", str(absolute)
    try:
        info = os.stat(absolute)
    except FileNotFoundError:
        return "missing_file", REASONS["missing_file"], str(absolute)
    except PermissionError as err:
        return "unreadable_file", f"{err.strerror}; {REASONS['unreadable_file']}", str(absolute)
    except (OSError, ValueError) as err:  # ELOOP (symlink loop), ENAMETOOLONG, ENOTDIR, an embedded NUL byte...
        text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return "bad_path", f"{text}; {REASONS['bad_path']}", str(absolute)
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
        return "not_a_file", f"the path is {kind}; {REASONS['not_a_file']}", str(absolute)
    if info.st_size == 0:
        return "empty_file", REASONS["empty_file"], str(absolute)
    if not os.access(absolute, os.R_OK):
        return "unreadable_file", f"permission denied; {REASONS['unreadable_file']}", str(absolute)
    return None, "", str(absolute)


def validate_catalog(
    catalog_path: Path | str, config: CatalogConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and check a catalog; return (validated rows, quarantined rows with reason and message).

    Validated rows get our column names (id_str, file_loc as an absolute path), a `labelled`
    flag and a `chunk` number (a hash of the id, about `chunk_size` rows each: `assign_chunks`) for chunked
    image jobs. Rows are sorted by id.
    User columns other than the id/path are kept unchanged.
    """
    catalog_path = Path(catalog_path)
    try:
        raw = read_table(catalog_path, text_columns=(config.id_column, config.file_column), keep_bytes=(config.file_column,))
    except pd.errors.EmptyDataError:
        raise CatalogError(f"Catalog {catalog_path} is empty (not even a header line); point catalog.path at your catalog") from None
    except pd.errors.ParserError as err:
        raise CatalogError(f"Catalog {catalog_path} is not well-formed CSV: {err}. Fix that line: every line needs the header's columns") from None
    except (OSError, ValueError) as err:  # pyarrow: a truncated or corrupt Parquet file
        raise CatalogError(f"Cannot read catalog {catalog_path} ({type(err).__name__}: {err}); re-export or re-download it") from None
    if len(raw) == 0:
        raise CatalogError(f"Catalog {catalog_path} has no rows; point catalog.path at a catalog with galaxies in it")
    needed = [config.id_column, config.file_column, *config.label_cols]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise CatalogError(
            f"Catalog {catalog_path} lacks column(s) {missing}. It has {list(raw.columns)}. "
            "Map your column names in the config (catalog.id_column / file_column / label_columns) "
            "or choose the decision tree and question_suffix your vote columns use."
        )
    given_root = Path(config.image_root) if config.image_root else catalog_path.parent
    root = given_root.resolve()
    df = raw.rename(columns={config.id_column: ID, config.file_column: FILE})
    df.insert(0, "row", np.arange(len(df)))
    df[ID] = df[ID].astype("string").str.strip()
    df[FILE] = df[FILE].astype(pd.StringDtype("python")).str.strip()  # may hold undecodable bytes until inspected
    quarantined: list[pd.DataFrame] = []
    ok = pd.Series(True, index=df.index)

    def reject(mask: pd.Series, reason: str, message: str | pd.Series) -> None:
        nonlocal ok
        mask = mask & ok
        if mask.any():
            quarantined.append(_quarantine_rows(df, mask, reason, message))
            ok = ok & ~mask

    reject(df[ID].isna() | (df[ID] == ""), "missing_id", f"empty {config.id_column!r}; {REASONS['missing_id']}")
    reject(df[ID].duplicated(keep=False) & df[ID].notna(), "duplicate_id", f"{config.id_column!r} repeated; {REASONS['duplicate_id']}")
    reject(df[FILE].isna() | (df[FILE] == ""), "missing_path", f"empty {config.file_column!r}; {REASONS['missing_path']}")

    # the root as written and as resolved: a root that is itself a symlink (/data -> /mnt/...) accepts paths either way
    roots = tuple(dict.fromkeys((Path(os.path.abspath(given_root)), root)))
    checked = [inspect_image_path(p, roots) if ok.iat[i] and isinstance(p, str) else (None, "", printable(p)) for i, p in enumerate(df[FILE])]
    df[FILE] = pd.array([c[2] for c in checked], dtype="string")  # absolute, and storable in Arrow strings
    reasons = pd.Series([c[0] for c in checked], index=df.index)
    for reason in [r for r in dict.fromkeys(reasons) if r]:
        mask = reasons == reason
        reject(mask, reason, pd.Series([c[1] for c in checked], index=df.index)[mask])

    labels = df[list(config.label_cols)].apply(pd.to_numeric, errors="coerce") if config.label_cols else pd.DataFrame(index=df.index)
    if config.label_cols:
        non_numeric = raw[list(config.label_cols)].notna() & labels.isna()
        n_missing = labels.isna().sum(axis=1)
        none_given = (n_missing == len(config.label_cols)) & ~non_numeric.any(axis=1)
        if config.label_kind == "votes":
            reject(non_numeric.any(axis=1), "invalid_votes", "label value is not a number; " + REASONS["invalid_votes"])
        else:
            first_bad = non_numeric.idxmax(axis=1)
            text = pd.Series([f"{c!r} is {raw.at[i, c]!r}, not a number; {REASONS['invalid_label']}" for i, c in first_bad.items()], index=df.index)
            reject(non_numeric.any(axis=1), "invalid_label", text)
        reject((n_missing > 0) & ~none_given, "partial_labels", REASONS["partial_labels"])
        if not config.allow_unlabelled:
            reject(none_given, "missing_labels", REASONS["missing_labels"])
        if config.label_kind == "votes":
            values = labels.to_numpy(dtype=float, na_value=np.nan)
            bad = np.isfinite(values) & ((values < 0) | (values != np.round(values)))
            bad |= np.isinf(values)
            reject(pd.Series(bad.any(axis=1), index=df.index), "invalid_votes", REASONS["invalid_votes"])
        else:
            reject(pd.Series(np.isinf(labels.to_numpy(dtype=float, na_value=np.nan)).any(axis=1), index=df.index),
                   "invalid_label", "label value is infinite; " + REASONS["invalid_label"])
        if config.label_kind == "classes":
            labels = _class_labels(df, labels, config, reject)
        for total_col, answer_cols in config.question_totals:
            if total_col in df.columns:
                totals = pd.to_numeric(df[total_col], errors="coerce")
                exceeds = labels[list(answer_cols)].gt(totals, axis=0).any(axis=1)
                reject(exceeds, "votes_exceed_total", f"{REASONS['votes_exceed_total']} ({total_col})")
        df[list(config.label_cols)] = labels
        df[LABELLED] = ~none_given
    else:
        df[LABELLED] = False

    validated = df[ok].sort_values(ID).reset_index(drop=True)
    validated[CHUNK] = assign_chunks(validated[ID], chunk_count(len(validated), config.chunk_size, config.max_chunks))
    quarantine = pd.concat(quarantined, ignore_index=True) if quarantined else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    quarantine = quarantine.astype({"row": "int64"}).sort_values("row").reset_index(drop=True)
    log.info("Catalog %s: %d rows in = %d ok + %d quarantined", catalog_path, len(df), len(validated), len(quarantine))
    for reason, n in quarantine["reason"].value_counts().items():
        log.warning("  quarantined %d row(s): %s", n, reason)
    check_quarantine_fraction(len(df), quarantine, config.max_quarantine_fraction, catalog_path)
    return validated, quarantine


def chunk_count(n_rows: int, chunk_size: int, max_chunks: int | None = None) -> int:
    """How many chunks (shard jobs) `n_rows` galaxies get: the power of two nearest n_rows / chunk_size on a log
    scale, at least 1 and at most `max_chunks`, so the number of jobs stops growing with the catalog.

    Chunks then hold 0.7-1.4 x chunk_size galaxies on average. The count, and every chunk with it, changes only
    when the catalog crosses chunk_size x 2^(k + 1/2) rows (thresholds a factor of 2 apart), not when galaxies
    are added or removed between them.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    if max_chunks is not None and (max_chunks < 1 or max_chunks & (max_chunks - 1)):
        raise ValueError(f"max_chunks must be a power of two (1, 2, 4, ... 16, ...), not {max_chunks}: chunk counts are powers of two")
    count = 1 if n_rows <= chunk_size else 2 ** round(math.log2(n_rows / chunk_size))
    return count if max_chunks is None else min(count, max_chunks)


def assign_chunks(ids: pd.Series, n_chunks: int) -> np.ndarray:
    """Each id's chunk (0..n_chunks-1), fixed by the id and the number of chunks alone, never by row position:
    adding, removing or reordering rows moves no other galaxy to another chunk."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(i).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") % n_chunks for i in ids),
        dtype=np.int64,
        count=len(ids),
    )


def chunk_digests(validated: pd.DataFrame, label_cols: tuple[str, ...] | list[str] = ()) -> dict[int, str]:
    """Per chunk, a digest of what its shards depend on in the catalog: its galaxies' ids and image paths, and the
    values of `label_cols` where the shards hold labels (the main chain's votes; a finetuning catalog's shards hold
    none, so its labels never rewrite a chunk).

    The shard job's rerun trigger: a catalog edit reruns only the chunks whose galaxies changed.
    """
    label_cols = list(label_cols)
    rows = validated[[CHUNK, ID, FILE, *label_cols]].sort_values([CHUNK, ID])
    lines = rows[ID].astype(str) + "\0" + rows[FILE].astype(str)
    for col in label_cols:  # shortest round-trip text of each float: the same value always gives the same digest
        lines = lines + "\0" + rows[col].astype(np.float64).map(repr)
    lines = lines + "\n"
    return {
        int(chunk): hashlib.sha256("".join(text).encode("utf-8", "surrogatepass")).hexdigest()
        for chunk, text in lines.groupby(rows[CHUNK].to_numpy(), sort=True)
    }


def chunk_digests_file(validated_path: Path | str, label_cols: tuple[str, ...] | list[str] = ()) -> dict[int, str]:
    """chunk_digests of a validated catalog file (reading only the columns they need)."""
    return chunk_digests(pd.read_parquet(validated_path, columns=[CHUNK, ID, FILE, *label_cols]), label_cols)


def check_quarantine_fraction(n_in: int, quarantine: pd.DataFrame, max_fraction: float, source: Path | str) -> None:
    """Refuse to go on with a catalog whose quarantined fraction exceeds `max_fraction`."""
    fraction = len(quarantine) / max(n_in, 1)
    if fraction > max_fraction:
        reasons = quarantine["reason"].value_counts().to_dict()
        raise CatalogError(
            f"{len(quarantine)} of {n_in} rows of {source} ({fraction:.1%}) are quarantined, above the "
            f"limit of {max_fraction:.1%} (max_quarantine_fraction: catalog.* for the main catalog, finetune.* for finetuning "
            f"catalogs). Reasons: {reasons}. "
            "Fix the catalog (see the quarantine table for each row) or raise the limit."
        )


def write_validation(validated: pd.DataFrame, quarantine: pd.DataFrame, validated_path: Path | str, quarantine_path: Path | str) -> None:
    """Write both tables atomically as Parquet."""
    atomic_write_table(validated, validated_path)
    atomic_write_table(quarantine, quarantine_path)


def accounting(n_in: int, ready: pd.DataFrame, quarantine: pd.DataFrame) -> dict:
    """Counts for the report: in = ok + quarantined, by reason, and labelled vs unlabelled."""
    if n_in != len(ready) + len(quarantine):
        raise RuntimeError(f"Row accounting broken: {n_in} in != {len(ready)} ok + {len(quarantine)} quarantined")
    return {
        "n_in": int(n_in),
        "n_ok": int(len(ready)),
        "n_quarantined": int(len(quarantine)),
        "n_labelled": int(ready[LABELLED].sum()),
        "n_unlabelled": int((~ready[LABELLED]).sum()),
        "quarantined_by_reason": {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()},
    }


def validate_catalog_file(catalog_path: Path | str, validated_path: Path | str, quarantine_path: Path | str, config: CatalogConfig) -> None:
    """The validate_catalog rules: validate a catalog file and write both tables; CatalogError, naming the reasons,
    when no row is usable."""
    validated, quarantine = validate_catalog(catalog_path, config)
    if validated.empty:  # nothing to shard or train on: say why here, not as an error of a later job
        examples = "; ".join(f"row {r['row']} ({r[ID]}): {r['reason']}: {r['message']}" for r in quarantine.head(3).to_dict("records"))
        raise CatalogError(f"No row of {catalog_path} is usable: all {len(quarantine)} are quarantined ({quarantine['reason'].value_counts().to_dict()}; "
                           f"{examples}). Fix the catalog: each reason is explained in README.md")
    write_validation(validated, quarantine, validated_path, quarantine_path)


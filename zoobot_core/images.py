"""Decode, convert and resize galaxy images as every catalog's shards take them (load_resized), the one policy for an image
that cannot be used (unreadable_reason: quarantined, or the machine's fault and the job stops), and the ready catalog
with its quarantine table and row accounting (gather_index, write_gathered)."""

from __future__ import annotations

import errno
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from zoobot_core.catalog import FILE, ID, LABELLED, QUARANTINE_COLUMNS, CatalogError, check_quarantine_fraction
from zoobot_core.fits_images import FitsConfig, is_fits, load_fits_rgb
from zoobot_core.io import atomic_write_table, write_json

log = logging.getLogger(__name__)

RESIZED = "resized_loc"
# what Pillow raises for a file that is not a readable image (quarantined as unreadable_image)
UNREADABLE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, zlib.error)
# the OSErrors that are the machine's fault (disk full, quota, I/O error, stale NFS handle, read-only file system, out of
# memory or file handles, permissions): a rerun after fixing the machine reads the image. Every other error is the file's
# (missing, a directory, corrupt: decoders raise corrupt data as OSErrors without an errno, or with EINVAL from a bad seek)
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                            errno.EACCES, errno.EPERM, errno.ETIMEDOUT, errno.ENOLCK})


class MachineError(RuntimeError):
    """The machine (disk, file system, memory), not the image, failed while an image was read or written."""


def unreadable_reason(err: BaseException, files: str) -> tuple[str, str]:
    """The one policy for an image that failed (resizing and sharding alike): ('unreadable_image', message) when
    the file is at fault (corrupt, not an image, missing); MachineError naming `files` when the machine is."""
    if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS:
        name = errno.errorcode.get(err.errno, str(err.errno))
        raise MachineError(
            f"{files}: {type(err).__name__}: {err} ({name}). The machine failed (disk full, quota, I/O error, stale NFS "
            "handle, read-only file system, out of memory or file handles, permissions), not the image, so nothing was quarantined; "
            "fix that and rerun the job"
        ) from err
    return "unreadable_image", f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class ResizeConfig:
    """Output size and format of the resized images, and the speed/quality knobs (docs/benchmarks.md)."""

    size: int = 64
    file_format: str = "png"  # png (lossless) or jpg
    jpeg_quality: int = 95
    png_compress_level: int = 1  # 0-9: 1 encodes ~2x faster than Pillow's default 6, files ~10-20% larger
    draft_tolerance: float = 0.9  # JPEGs may be decoded at 1/2, 1/4, 1/8 scale if that is >= tolerance * size
    reducing_gap: float | None = 2.0  # Pillow: integer box reduction first while the rest is >= this factor; None: none
    fits: FitsConfig = FitsConfig()  # how FITS cutouts become RGB (fits_images.py)

    def __post_init__(self) -> None:
        if isinstance(self.fits, dict):  # from the config / a rule's params
            object.__setattr__(self, "fits", FitsConfig(**self.fits))


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """A 16-bit, 32-bit or float image as 8 bits: divided by its brightest finite pixel, then clipped to 0-255, so
    negative pixels (sky-subtracted data) are black instead of wrapping around (-5 became 244) and NaN/inf are 0/255."""
    finite = np.isfinite(array)
    top = array[finite].max() if finite.any() and array[finite].max() > 0 else 1.0
    scaled = np.nan_to_num(array / top, nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def load_rgb(
    path: Path | str, size: int, draft_tolerance: float = 1.0, reducing_gap: float | None = 2.0, fits: FitsConfig | None = None
) -> Image.Image:
    """Open an image (format read from its content, not its extension), convert it to 8-bit RGB and
    resize it to size x size (LANCZOS).

    Greyscale is replicated to RGB, alpha is dropped, 16-bit and float images are scaled to 8 bits.
    FITS files (.fits, .fits.gz) are stretched to RGB as `fits` says (fits_images.py); BadImage if unusable.
    JPEGs are decoded at reduced scale (draft) down to `draft_tolerance * size`. Pillow's
    `reducing_gap` (2.0: identical to plain LANCZOS at 424 -> 128/224 px; 1.0: faster, ~44 dB).
    """
    if is_fits(path):
        rgb = load_fits_rgb(path, fits or FitsConfig())
        return rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    with Image.open(path) as img:
        if img.format == "JPEG":
            least = max(1, int(np.ceil(size * draft_tolerance)))
            img.draft("RGB", (least, least))
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = Image.fromarray(scale_to_uint8(np.asarray(img, dtype=np.float64)))
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")  # convert() of an RGB image would copy it
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    return rgb


def load_resized(path: Path | str, config: ResizeConfig) -> Image.Image:
    """load_rgb with a ResizeConfig's size, speed knobs and FITS settings: the pipeline's one resize."""
    return load_rgb(path, config.size, config.draft_tolerance, config.reducing_gap, config.fits)


def view_file(path: Path | str) -> np.ndarray:
    """An already-resized image file as RGB uint8, for figures."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@dataclass(frozen=True)
class ImageViewer:
    """A catalog image as the model sees it (resized as `config` says, FITS stretched), for figures: the
    workflow keeps no resized copies, so montages read the catalog's files."""

    config: ResizeConfig

    def __call__(self, path: Path | str) -> np.ndarray:
        return np.asarray(load_resized(path, self.config))


def save_image(image: Image.Image, path: Path | str, config: ResizeConfig) -> None:
    """Encode as the configured format (JPEG quality / PNG compression from the config)."""
    if config.file_format == "jpg":
        image.save(path, format="JPEG", quality=config.jpeg_quality)
    else:
        image.save(path, format="PNG", compress_level=config.png_compress_level)


def gather_index(
    validated: pd.DataFrame, validation_quarantine: pd.DataFrame, index: pd.DataFrame, max_quarantine_fraction: float, fix: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ready catalog and the full quarantine table, from an image index (one row per validated galaxy:
    id_str, a quarantine reason and message where its image could not be used, any other columns joined on)."""
    missing = set(validated[ID]) - set(index[ID])
    if missing:
        raise RuntimeError(f"{len(missing)} validated galaxies (e.g. {sorted(missing)[:3]}) have no resized image; {fix}")
    merged = validated.merge(index, on=ID, how="left", validate="one_to_one")
    bad = merged["reason"].notna()
    failed = merged[bad]
    image_quarantine = failed[["row", ID, FILE]].assign(stage="resize", reason=failed["reason"], message=failed["message"])
    ready = merged[~bad].drop(columns=["reason", "message"]).reset_index(drop=True)
    parts = [q for q in (validation_quarantine, image_quarantine) if len(q)]
    quarantine = pd.concat(parts, ignore_index=True)[QUARANTINE_COLUMNS] if parts else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    quarantine = quarantine.sort_values("row").reset_index(drop=True)
    n_in = len(validated) + len(validation_quarantine)
    check_quarantine_fraction(n_in, quarantine, max_quarantine_fraction, "the catalog")
    if ready.empty:
        raise CatalogError(f"No galaxy of the catalog has a usable image: all {n_in} rows are quarantined ({quarantine['reason'].value_counts().to_dict()}); "
                           "see the quarantine table for each row's reason and fix")
    log.info("Ready: %d galaxies (%d labelled); quarantined in all: %d", len(ready), ready[LABELLED].sum(), len(quarantine))
    return ready, quarantine


def write_gathered(
    validated: pd.DataFrame,
    validation_quarantine: pd.DataFrame,
    ready: pd.DataFrame,
    quarantine: pd.DataFrame,
    ready_path: Path | str,
    quarantine_path: Path | str,
    accounting_path: Path | str,
) -> dict:
    """Write the ready catalog, the full quarantine table and the row accounting (in = ready + quarantined)."""
    from zoobot_core.catalog import accounting

    counts = accounting(len(validated) + len(validation_quarantine), ready, quarantine)
    atomic_write_table(ready, ready_path)
    atomic_write_table(quarantine, quarantine_path)
    write_json(counts, accounting_path)
    return counts

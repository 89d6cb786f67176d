"""FITS cutouts (one band or several, e.g. Legacy Survey g, r, z in nanomaggies) as the 8-bit RGB the pipeline uses.

Bands are picked from a (bands, y, x) cube, multiplied by per-band scales and mapped to 0-255 with the
asinh stretch of Lupton et al. (2004) as astropy implements it (`make_lupton_rgb`), the kind of stretch
Galaxy Zoo's DECaLS images used. Files that cannot give a usable image are refused with a reason
(`BadImage`), which the resize step turns into a quarantine row.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from astropy.io import fits

log = logging.getLogger(__name__)

FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz")


class BadImage(ValueError):
    """An image file that gives no usable picture; `reason` is its quarantine reason (catalog.REASONS)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FitsConfig:
    """How FITS pixels become RGB (config images.fits; documented in config/README.md).

    The stretch is absolute, in the data's units after `scales`: `minimum` is black, the asinh is linear
    up to about `stretch`, and `q` softens it (q -> 0: linear from minimum to minimum + stretch).
    """

    hdu: int | str | None = None  # index or EXTNAME; None: the first HDU holding an image
    bands: tuple[int, ...] | None = None  # planes of the cube as (R, G, B), or one plane (greyscale); None: one-plane files only
    scales: tuple[float, ...] | None = None  # multiply each chosen band by this before the stretch; None: 1
    minimum: float = 0.0
    stretch: float = 0.5
    q: float = 8.0
    max_nonfinite_fraction: float = 0.0  # NaN/inf pixels allowed (painted black); above it the image is quarantined

    def __post_init__(self) -> None:
        for name in ("bands", "scales"):  # lists from YAML as tuples (hashable, frozen)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise ValueError(f"images.fits.bands must name 1 (greyscale) or 3 (R, G, B) planes, got {list(self.bands)}")
        if self.scales is not None and self.bands is not None and len(self.scales) != len(self.bands):
            raise ValueError(f"images.fits.scales needs one value per band: {len(self.bands)} bands, {len(self.scales)} scales")
        if self.stretch <= 0 or self.q < 0:
            raise ValueError(f"images.fits.stretch must be > 0 and q >= 0, got stretch {self.stretch}, q {self.q}")


def is_fits(path: Path | str) -> bool:
    """Whether a file is FITS, by its first bytes (gzip-compressed FITS: by a FITS suffix under the .gz)."""
    with open(path, "rb") as f:
        head = f.read(len(FITS_MAGIC))
    if head == FITS_MAGIC:
        return True
    if head[:2] == GZIP_MAGIC and str(path).lower().endswith(FITS_SUFFIXES):
        try:
            with gzip.open(path, "rb") as f:
                return f.read(len(FITS_MAGIC)) == FITS_MAGIC
        except (OSError, EOFError, zlib.error):  # a .fits.gz cut short or corrupt: not readable as FITS
            return False
    return False


def _image_hdu(hdul: "fits.HDUList", hdu: int | str | None, path: Path | str) -> "fits.ImageHDU":
    """The HDU to read: by index or EXTNAME, or the first one holding an image of 2+ dimensions."""
    names = [h.name for h in hdul]
    if hdu is None:
        for h in hdul:
            if getattr(h, "is_image", False) and h.data is not None and h.data.ndim >= 2:
                return h
        raise BadImage("fits_missing_hdu", f"{path}: no HDU holds an image (HDUs: {names}); check the file or set images.fits.hdu")
    try:
        chosen = hdul[hdu]
    except (IndexError, KeyError):
        raise BadImage("fits_missing_hdu", f"{path}: has no HDU {hdu!r} (HDUs: {names}); set images.fits.hdu to one of them") from None
    if not getattr(chosen, "is_image", False) or chosen.data is None or chosen.data.ndim < 2:
        raise BadImage("fits_missing_hdu", f"{path}: HDU {hdu!r} holds no image (HDUs: {names}); set images.fits.hdu to one that does")
    return chosen


def read_fits_planes(path: Path | str, config: FitsConfig) -> np.ndarray:
    """The chosen bands of a FITS file as float64 (bands, y, x), scaled, non-finite pixels set to `minimum`."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            data = np.array(_image_hdu(hdul, config.hdu, path).data, dtype=np.float64)
    except BadImage:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error) as err:
        if isinstance(err, OSError) and err.errno is not None:  # the file system's, not the file's: images.unreadable_reason decides
            raise
        raise BadImage("unreadable_image", f"{path}: not a readable FITS file ({type(err).__name__}: {err})") from None
    if data.ndim == 2:
        data = data[np.newaxis]
    elif data.ndim != 3:
        raise BadImage("fits_bands", f"{path}: image has shape {data.shape}; need (y, x) or (bands, y, x)")
    n_planes = data.shape[0]
    if config.bands is None and n_planes == 3:  # file order would show a g, r, z cube as R = g, B = z: reversed colours
        raise BadImage(
            "fits_bands",
            f"{path}: 3 planes and images.fits.bands is null; set images.fits.bands to the planes shown as R, G, B: "
            "[2, 1, 0] for a Legacy Survey g, r, z cube (R = z, G = r, B = g, the usual colours), [0, 1, 2] if the planes are R, G, B",
        )
    bands = config.bands if config.bands is not None else tuple(range(n_planes))
    if any(b < 0 or b >= n_planes for b in bands):
        raise BadImage("fits_bands", f"{path}: images.fits.bands asks for planes {list(bands)}, the file has {n_planes}")
    if len(bands) not in (1, 3):
        raise BadImage("fits_bands", f"{path}: {n_planes} planes; set images.fits.bands to the 3 to use as R, G, B (or 1 for greyscale)")
    planes = data[list(bands)]
    finite = np.isfinite(planes)
    all_finite = bool(finite.all())
    if not all_finite:
        bad_fraction = 1.0 - finite.mean()
        if bad_fraction > config.max_nonfinite_fraction:
            raise BadImage(
                "fits_nonfinite",
                f"{path}: {bad_fraction:.1%} of pixels are NaN or infinite (allowed: images.fits.max_nonfinite_fraction = {config.max_nonfinite_fraction})",
            )
        planes = np.where(finite, planes, 0.0)
    if planes.min() == planes.max():
        raise BadImage("blank_image", f"{path}: every pixel is {planes.flat[0]:g}; no galaxy to see")
    if config.scales is not None:
        if len(config.scales) != len(bands):
            raise BadImage("fits_bands", f"{path}: {len(bands)} bands but {len(config.scales)} images.fits.scales; give one scale per band")
        planes = planes * np.asarray(config.scales, dtype=np.float64)[:, None, None]
    return planes if all_finite else np.where(finite, planes, config.minimum)  # NaN/inf pixels black, whatever the scales


def stretch_to_rgb(planes: np.ndarray, config: FitsConfig) -> np.ndarray:
    """(1 or 3, y, x) scaled planes as uint8 (y, x, 3), north up: Lupton asinh stretch (astropy), one band as grey.

    FITS rows run from the bottom of the sky up; they are flipped so the picture has north up, as survey JPEGs do.
    """
    from astropy.visualization import LuptonAsinhStretch, ManualInterval, make_lupton_rgb

    r, g, b = (planes[0], planes[0], planes[0]) if len(planes) == 1 else planes
    with np.errstate(invalid="ignore", divide="ignore"):  # astropy divides 0 by 0 for black pixels, then masks them
        rgb = make_lupton_rgb(
            r, g, b, interval=ManualInterval(vmin=config.minimum, vmax=None),
            stretch_object=LuptonAsinhStretch(stretch=config.stretch, Q=config.q),
        )
    return np.ascontiguousarray(rgb[::-1])


def load_fits_rgb(path: Path | str, config: FitsConfig) -> "Image.Image":
    """A FITS cutout as an 8-bit RGB PIL image at its own resolution."""

    return Image.fromarray(stretch_to_rgb(read_fits_planes(path, config), config))

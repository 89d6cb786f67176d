"""Resize benchmark: ours vs a naive Pillow loop vs decoding alone, on 424 px cutouts like DECaLS'
(PNG, JPEG, and FITS float32 g, r, z-like cubes, plain and gzip-compressed).

Run: `make bench` (or `.venv/bin/python tests/benchmarks/bench_resize.py`). Uses the real sample in
../shared when present, else renders synthetic 424 px galaxies. Prints galaxies/s per core
(one process; median of --repeats), PSNR of ours against the naive output, and the scaling with
worker processes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.visualization import make_lupton_rgb
from PIL import Image

from zoobot_core.fits_images import FitsConfig
from zoobot_core.images import ResizeConfig, load_rgb, save_image

SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/gz_decals_rings_sample/images"


def inputs(workdir: Path, n: int) -> dict[str, list[Path]]:
    """424 px PNGs (the real sample, or synthetic ones), JPEG (quality 90) copies of them, and FITS copies:
    a float32 (3, 424, 424) cube of the pixels as fluxes (0-2), plain and gzip-compressed."""
    pngs = sorted(SAMPLE.glob("*.png"))[:n]
    if not pngs:
        from zoobot_core.synthetic import draw_morphology, render_galaxy

        for i in range(n):
            rng = np.random.default_rng([0, i])
            Image.fromarray(render_galaxy(draw_morphology(rng), 424, rng)).save(workdir / f"syn{i}.png")
        pngs = sorted(workdir.glob("syn*.png"))
    jpgs = []
    for p in pngs:
        jpgs.append(workdir / f"{p.stem}.jpg")
        Image.open(p).convert("RGB").save(jpgs[-1], quality=90)
    fits_files, gz_files = [], []
    for p in pngs:
        cube = np.moveaxis(np.asarray(Image.open(p).convert("RGB"), np.float32)[::-1] / 127.5, -1, 0)  # rows bottom-up, as FITS
        fits_files.append(workdir / f"{p.stem}.fits")
        fits.PrimaryHDU(cube).writeto(fits_files[-1])
        gz_files.append(workdir / f"{p.stem}.fits.gz")
        with open(fits_files[-1], "rb") as src, gzip.open(gz_files[-1], "wb") as dst:
            dst.write(src.read())
    return {"png": pngs, "jpg": jpgs, "fits": fits_files, "fits.gz": gz_files}


def rate(fn, files: list[Path], repeats: int) -> float:
    """Files per second, median over repeats."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for f in files:
            fn(f)
        times.append(time.perf_counter() - start)
    return len(files) / statistics.median(times)


def decode_only(path: Path) -> object:
    """Read the pixels and nothing else."""
    if ".fits" in path.name:
        return fits.getdata(path, memmap=False) + 0  # read every pixel (a memory map would defer the reading)
    return Image.open(path).convert("RGB")


def naive(path: Path, size: int) -> bytes:
    """The textbook loop: open, (FITS: astropy's Lupton stretch at our default settings), LANCZOS, PNG."""
    buffer = io.BytesIO()
    if ".fits" in path.name:
        data = fits.getdata(path).astype(np.float64)
        image = Image.fromarray(make_lupton_rgb(data[0], data[1], data[2], stretch=FitsConfig().stretch, Q=FitsConfig().q)[::-1])
    else:
        image = Image.open(path).convert("RGB")
    image.resize((size, size), Image.LANCZOS).save(buffer, format="PNG")
    return buffer.getvalue()


def ours(path: Path, size: int, config: ResizeConfig) -> bytes:
    buffer = io.BytesIO()
    # the cubes are made from PNGs: their planes are R, G, B already
    save_image(load_rgb(path, size, config.draft_tolerance, config.reducing_gap, fits=FitsConfig(bands=(0, 1, 2))), buffer, config)
    return buffer.getvalue()


def psnr(a: bytes, b: bytes) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), float)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), float)
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=104)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--formats", nargs="+", default=["jpg", "png", "fits", "fits.gz"], help="input formats to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = inputs(Path(tmp), args.n)
        print(f"{len(files['png'])} cutouts of 424 px ({'real DECaLS sample' if SAMPLE.exists() else 'synthetic'}); galaxies/s on one core, median of {args.repeats}\n")
        print(
            "| input | -> px | decode only | naive (PNG out) | ours, PNG out | ours, JPEG out | ours PNG / naive | ours PNG / decode "
            "| PSNR ours PNG vs naive (dB) | fast PNG preset | fast / decode | PSNR fast vs naive (dB) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        png_cfg, jpg_cfg = ResizeConfig(file_format="png"), ResizeConfig(file_format="jpg")
        fast_cfg = ResizeConfig(file_format="png", png_compress_level=0, reducing_gap=1.0)
        for fmt in args.formats:
            for size in (128, 224):
                fs = files[fmt]
                decode = rate(decode_only, fs, args.repeats)
                base = rate(lambda f, s=size: naive(f, s), fs, args.repeats)
                ours_png = rate(lambda f, s=size: ours(f, s, png_cfg), fs, args.repeats)
                ours_jpg = rate(lambda f, s=size: ours(f, s, jpg_cfg), fs, args.repeats)
                fast = rate(lambda f, s=size: ours(f, s, fast_cfg), fs, args.repeats)
                quality = statistics.median(psnr(ours(f, size, png_cfg), naive(f, size)) for f in fs)
                fast_quality = statistics.median(psnr(ours(f, size, fast_cfg), naive(f, size)) for f in fs)
                print(
                    f"| {fmt} | {size} | {decode:.0f} | {base:.0f} | {ours_png:.0f} | {ours_jpg:.0f} | {ours_png / base:.2f}x | {ours_png / decode:.0%} "
                    f"| {quality:.1f} | {fast:.0f} | {fast / decode:.0%} | {fast_quality:.1f} |"
                )
        print("\nScaling with worker processes (one catalog chunk straight into raw shards, chunk_shards.write_chunk_shards,")
        print("424 px PNG -> 128 px, wall clock):\n")
        print("| workers | galaxies/s | speed-up |")
        print("|---|---|---|")
        from zoobot_core.chunk_shards import write_chunk_shards
        from zoobot_core.shards import ShardSettings

        fs = files["png"] * max(1, 200 // len(files["png"]))
        validated = pd.DataFrame({"id_str": [f"g{i}" for i in range(len(fs))], "file_loc": [str(f) for f in fs], "chunk": 0})
        first = None
        for workers in args.workers:
            times = []
            for r in range(args.repeats):
                start = time.perf_counter()
                write_chunk_shards(validated, 0, Path(tmp) / f"out_{workers}_{r}", ShardSettings(size=128, shard_size=64, image_encoding="raw"),
                                   ResizeConfig(size=128), workers=workers, hash_images=False)
                times.append(time.perf_counter() - start)
            speed = len(fs) / statistics.median(times)
            first = first or speed
            print(f"| {workers} | {speed:.0f} | {speed / first:.2f}x |")

if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    main()

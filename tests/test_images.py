import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_core.images import ResizeConfig, load_rgb


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (40, 40), 200),
        lambda: Image.new("RGBA", (40, 40), (200, 100, 50, 10)),
        lambda: Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)),
        lambda: Image.new("P", (40, 40)),
    ],
    ids=["greyscale", "rgba", "16bit", "palette"],
)
def test_any_image_mode_becomes_8bit_rgb_of_the_target_size(tmp_path, make):
    path = tmp_path / "img.png"
    make().save(path)
    out = load_rgb(path, 16)
    assert out.mode == "RGB" and out.size == (16, 16)


def test_16bit_images_keep_their_contrast(tmp_path):
    array = np.zeros((32, 32), dtype=np.uint16)
    array[8:24, 8:24] = 60000
    Image.fromarray(array).save(tmp_path / "deep.png")
    out = np.asarray(load_rgb(tmp_path / "deep.png", 32))
    assert out[16, 16, 0] == 255 and out[0, 0, 0] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.int32], ids=["float", "32bit-int"])
def test_negative_pixels_of_sky_subtracted_images_are_black_not_wrapped(tmp_path, dtype):
    """Sky-subtracted data has negative pixels; cast straight to 8 bits, -5 used to become 244 (bright noise)."""
    array = np.full((32, 32), -5, dtype=dtype)
    array[8:24, 8:24] = 1000
    array[0, 1] = -30000
    Image.fromarray(array).save(tmp_path / "sky.tif")
    out = np.asarray(load_rgb(tmp_path / "sky.tif", 32))
    assert out[16, 16, 0] == 255 and out[0, 0, 0] == 0 and out[0, 1, 0] == 0 and out.max(axis=2)[:8].max() == 0


def test_non_finite_float_pixels_become_black_or_white(tmp_path):
    array = np.full((16, 16), 0.5, dtype=np.float32)
    array[0, 0], array[0, 1], array[0, 2] = np.nan, np.inf, -np.inf
    Image.fromarray(array).save(tmp_path / "nan.tif")
    out = np.asarray(load_rgb(tmp_path / "nan.tif", 16))[0, :4, 0]
    assert out.tolist() == [0, 255, 0, 255]  # brightest finite pixel (0.5) is white


def test_jpeg_input_is_read(tmp_path):
    Image.new("RGB", (100, 100), (200, 10, 10)).save(tmp_path / "g.jpg", quality=95)
    out = np.asarray(load_rgb(tmp_path / "g.jpg", 25))
    assert out.shape == (25, 25, 3) and out[12, 12, 0] > 180


def test_wrong_extension_is_decoded_by_content(tmp_path):
    Image.new("RGB", (40, 40), (0, 200, 0)).save(tmp_path / "really_png.jpg", format="PNG")
    Image.new("RGB", (40, 40), (0, 0, 200)).save(tmp_path / "really_jpeg.png", format="JPEG")
    assert np.asarray(load_rgb(tmp_path / "really_png.jpg", 8))[4, 4, 1] == 200
    assert np.asarray(load_rgb(tmp_path / "really_jpeg.png", 8))[4, 4, 2] > 180


def test_corrupt_bytes_behind_a_valid_header_are_unreadable(tmp_path):
    from zoobot_core.chunk_shards import write_chunk_shards
    from zoobot_core.shards import ShardSettings

    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(500))
    Image.new("RGB", (30, 30), (9, 8, 7)).save(tmp_path / "fine.png")
    validated = pd.DataFrame({"id_str": ["c", "f"], "file_loc": [str(tmp_path / "corrupt.png"), str(tmp_path / "fine.png")], "chunk": [0, 0]})
    write_chunk_shards(validated, 0, tmp_path / "chunk_0", ShardSettings(size=8), ResizeConfig(size=8))
    unreadable = pd.read_parquet(tmp_path / "chunk_0/unreadable.parquet")
    assert unreadable["id_str"].tolist() == ["c"] and unreadable.loc[0, "reason"] == "unreadable_image"


def test_draft_decoding_stays_close_to_full_decoding(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:424, 0:424]
    galaxy = 255 * np.exp(-((x - 212) ** 2 + (y - 212) ** 2) / (2 * 40.0**2))
    rgb = np.clip(np.stack([galaxy] * 3, -1) + rng.normal(0, 4, (424, 424, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "g.jpg", quality=92)
    full = np.asarray(load_rgb(tmp_path / "g.jpg", 224, draft_tolerance=1.0), float)
    draft = np.asarray(load_rgb(tmp_path / "g.jpg", 224, draft_tolerance=0.9), float)
    psnr = 10 * np.log10(255**2 / np.mean((full - draft) ** 2))
    assert psnr > 35


def test_the_resize_benchmark_runs_with_every_input_format():
    """tests/benchmarks/bench_resize.py (make bench) at 4 cutouts, so it cannot rot; FITS rates sit beside PNG/JPEG."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "benchmarks" / "bench_resize.py"
    result = subprocess.run([sys.executable, str(script), "--n", "4", "--repeats", "1", "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:3] for line in result.stdout.splitlines() if line.startswith("| ") and "px" not in line]
    assert {(fmt.strip(), px.strip()) for fmt, px in rows} >= {(f, p) for f in ("jpg", "png", "fits", "fits.gz") for p in ("128", "224")}


def test_a_full_disk_stops_the_chunk_and_leaves_nothing_then_a_rerun_writes_it(tmp_path, monkeypatch):
    """A chunk's shard written onto a full disk (/dev/full: the kernel fails every write with ENOSPC) stops the job
    and leaves no chunk behind (nothing quarantined, no half-written shard): a chunk reruns only when its galaxies
    change, so a quarantine here would lose the galaxies for good. Once the disk has room, the rerun writes the
    chunk, and a corrupt image is still quarantined."""
    import builtins
    import errno
    import os

    from zoobot_core.chunk_shards import write_chunk_shards
    from zoobot_core.shards import ShardSettings

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    for name in ("a", "b"):
        Image.new("RGB", (30, 30), (9, 8, 7)).save(tmp_path / f"{name}.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    validated = pd.DataFrame({
        "row": [0, 1, 2], "id_str": ["a", "b", "c"], "labelled": [False] * 3, "chunk": [0] * 3,
        "file_loc": [str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "corrupt.png")],
    })
    out = tmp_path / "chunk_0"
    real_open = builtins.open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        """The chunk's shards go to /dev/full; everything else as usual."""
        full = "w" in mode and str(file).startswith(str(tmp_path / ".chunk_0")) and str(file).endswith(".tfrecord")
        return real_open("/dev/full" if full else file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", open_on_a_full_disk)
        with pytest.raises(OSError) as caught:
            write_chunk_shards(validated, 0, out, ShardSettings(size=8), ResizeConfig(size=8))
    assert caught.value.errno == errno.ENOSPC
    assert not out.exists() and not list(tmp_path.glob(".chunk_0*"))  # no half-written chunk, no list of unreadable images
    manifest = write_chunk_shards(validated, 0, out, ShardSettings(size=8), ResizeConfig(size=8))  # the disk has room again
    assert sorted(manifest["id_str"]) == ["a", "b"]
    assert pd.read_parquet(out / "unreadable.parquet").set_index("id_str")["reason"].to_dict() == {"c": "unreadable_image"}


@pytest.mark.parametrize("code", ["ENOSPC", "EIO", "ESTALE", "EDQUOT", "EROFS", "ENOMEM", "EMFILE", "EACCES"])
def test_file_system_errors_are_the_machines_fault_and_stop_the_job(code):
    """One policy for resizing and sharding: an OSError whose errno is the machine's (images.MACHINE_ERRNOS) is raised
    as MachineError naming the file, never quarantined: a rerun after fixing the machine reads the image."""
    import errno
    import os

    from zoobot_core.images import MachineError, unreadable_reason

    error = OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    with pytest.raises(MachineError, match=r"/data/g1\.png.*rerun") as caught:
        unreadable_reason(error, "/data/g1.png")
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [FileNotFoundError(2, "No such file or directory"), OSError("image file is truncated"), SyntaxError("not a PNG file"), EOFError(),
     IsADirectoryError(21, "Is a directory"), OSError(22, "Invalid argument")],
    ids=["missing", "truncated", "bad-header", "eof", "a-directory", "bad-seek"],
)
def test_corrupt_or_missing_images_are_the_files_fault_and_quarantined(error):
    from PIL import UnidentifiedImageError

    from zoobot_core.images import unreadable_reason

    reason, message = unreadable_reason(error, "/data/g1.png")
    assert reason == "unreadable_image" and message.startswith(type(error).__name__)
    assert unreadable_reason(UnidentifiedImageError("cannot identify image file"), "/data/g1.png")[0] == "unreadable_image"

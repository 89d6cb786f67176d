import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_core.images import RESIZED, ResizeConfig, gather_resized, load_rgb, resize_chunk, safe_filename


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


def test_safe_filename_never_collides_and_keeps_plain_ids():
    assert safe_filename("J012055.92-003713.9") == "J012055.92-003713.9"
    assert safe_filename("a/b") != safe_filename("a_b")
    assert "/" not in safe_filename("../../etc/passwd")
    assert not safe_filename(".hidden").startswith(".")


def test_resize_chunk_quarantines_unreadable_images_and_gather_accounts_for_all(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 50), (1, 2, 3)).save(good)
    (tmp_path / "text.png").write_text("not an image")
    truncated = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    validated = pd.DataFrame({
        "row": [0, 1, 2], "id_str": ["g", "t", "x"], "file_loc": [str(good), str(tmp_path / "text.png"), str(truncated)],
        "labelled": [True, True, False], "chunk": [0, 0, 0],
    })
    index = resize_chunk(validated, 0, tmp_path / "chunk_0", ResizeConfig(size=24, file_format="jpg"))
    assert index.set_index("id_str")["reason"].fillna("ok").to_dict() == {"g": "ok", "t": "unreadable_image", "x": "unreadable_image"}
    with Image.open(index.loc[0, RESIZED]) as img:
        assert img.format == "JPEG" and img.size == (24, 24)
    earlier = pd.DataFrame([{"row": 3, "id_str": "m", "file_loc": "nowhere.png", "stage": "validate", "reason": "missing_file", "message": "gone"}])
    ready, quarantine = gather_resized(validated, earlier, [tmp_path / "chunk_0"], max_quarantine_fraction=1.0)
    assert list(ready["id_str"]) == ["g"]
    assert quarantine[["row", "stage", "reason"]].values.tolist() == [[1, "resize", "unreadable_image"], [2, "resize", "unreadable_image"], [3, "validate", "missing_file"]]


def test_a_failed_chunk_leaves_no_partial_output(tmp_path, monkeypatch):
    import zoobot_core.images as images

    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    validated = pd.DataFrame({"id_str": ["a", "b"], "file_loc": [str(tmp_path / "a.png")] * 2, "chunk": [0, 0]})
    calls = []

    def exploding_load(path, size, draft_tolerance=1.0, reducing_gap=2.0, fits=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # an interruption mid-chunk
        return Image.new("RGB", (size, size))

    monkeypatch.setattr(images, "load_rgb", exploding_load)
    with pytest.raises(KeyboardInterrupt):
        resize_chunk(validated, 0, tmp_path / "chunk_0", ResizeConfig(size=8))
    assert not (tmp_path / "chunk_0").exists()
    assert not list(tmp_path.glob(".chunk_0*"))


def test_gathering_refuses_a_chunk_resized_from_another_version_of_the_catalog(tmp_path):
    """Each chunk records the galaxies it resized; gathering checks them against the validated catalog, so a chunk
    Snakemake did not rerun (rerun triggers narrowed to mtime, --touch, a file system showing a job old data)
    stops the run, naming the chunk, instead of joining old images under new rows."""
    for name in ("a", "b"):
        Image.new("RGB", (30, 30)).save(tmp_path / f"{name}.png")
    before = pd.DataFrame({"row": [0], "id_str": ["a"], "file_loc": [str(tmp_path / "a.png")], "labelled": [True], "chunk": [0]})
    resize_chunk(before, 0, tmp_path / "chunk_0", ResizeConfig(size=8))
    ready, _ = gather_resized(before, before.iloc[:0], [tmp_path / "chunk_0"], 0.0)
    assert ready["id_str"].tolist() == ["a"]
    empty = before.iloc[:0][["row", "id_str", "file_loc"]]
    for after in (before.assign(file_loc=str(tmp_path / "b.png")),  # the same galaxy, another image file
                  pd.concat([before, before.assign(row=1, id_str="b", file_loc=str(tmp_path / "b.png"))])):  # a galaxy joined chunk 0
        with pytest.raises(RuntimeError, match=r"chunk\(s\) 0 do not hold .* snakemake -R resize_finetune_images"):
            gather_resized(after, empty, [tmp_path / "chunk_0"], 1.0)
    with pytest.raises(RuntimeError, match=r"chunk\(s\) 1 do not hold"):  # a chunk the catalog has and no folder gives
        gather_resized(pd.concat([before, before.assign(row=1, id_str="b", chunk=1)]), empty, [tmp_path / "chunk_0"], 1.0)


def test_wrong_extension_is_decoded_by_content(tmp_path):
    Image.new("RGB", (40, 40), (0, 200, 0)).save(tmp_path / "really_png.jpg", format="PNG")
    Image.new("RGB", (40, 40), (0, 0, 200)).save(tmp_path / "really_jpeg.png", format="JPEG")
    assert np.asarray(load_rgb(tmp_path / "really_png.jpg", 8))[4, 4, 1] == 200
    assert np.asarray(load_rgb(tmp_path / "really_jpeg.png", 8))[4, 4, 2] > 180


def test_corrupt_bytes_behind_a_valid_header_are_unreadable(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(500))
    validated = pd.DataFrame({"id_str": ["c"], "file_loc": [str(tmp_path / "corrupt.png")], "chunk": [0]})
    index = resize_chunk(validated, 0, tmp_path / "chunk_0", ResizeConfig(size=8))
    assert index.loc[0, "reason"] == "unreadable_image"


def test_worker_processes_give_the_same_chunk_as_one_process(tiny_synthetic, tmp_path):
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    validated = pd.DataFrame({"id_str": catalog["id_str"], "file_loc": [str(tiny_synthetic / p) for p in catalog["file_loc"]], "chunk": 0})
    one = resize_chunk(validated, 0, tmp_path / "one", ResizeConfig(size=32), workers=1)
    two = resize_chunk(validated, 0, tmp_path / "two", ResizeConfig(size=32), workers=2)
    pd.testing.assert_frame_equal(one.drop(columns=RESIZED), two.drop(columns=RESIZED))
    assert one["reason"].notna().sum() == 4  # the fixture's 4 broken files (no validation step here)
    for name in sorted(p.name for p in (tmp_path / "one").glob("*.png")):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


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


def test_a_full_disk_stops_the_chunk_naming_the_file_and_quarantines_nothing(tmp_path, monkeypatch):
    """A resized image written onto a full disk (/dev/full: the kernel fails every write with ENOSPC) stops the job,
    naming the galaxy and its file, and leaves no chunk behind: quarantined, the galaxy would stay lost, because a
    chunk reruns only when its galaxies change. Once the disk has room, a corrupt image is still quarantined."""
    import builtins
    import errno
    import os

    from zoobot_core.images import MachineError

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    for name in ("a", "b"):
        Image.new("RGB", (30, 30), (9, 8, 7)).save(tmp_path / f"{name}.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    validated = pd.DataFrame({
        "row": [0, 1, 2], "id_str": ["a", "b", "c"], "labelled": [True] * 3, "chunk": [0] * 3,
        "file_loc": [str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "corrupt.png")],
    })
    out = tmp_path / "chunk_0"
    real_open = builtins.open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        """The chunk's resized images go to /dev/full; everything else as usual."""
        full = "w" in mode and str(file).startswith(str(tmp_path / ".chunk_0")) and str(file).endswith(".png")
        return real_open("/dev/full" if full else file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", open_on_a_full_disk)
        with pytest.raises(MachineError, match=r"galaxy a: .*a\.png.*No space left on device.*rerun") as caught:
            resize_chunk(validated, 0, out, ResizeConfig(size=8))
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.ENOSPC
    assert not out.exists() and not list(tmp_path.glob(".chunk_0*"))  # no half-written chunk, no index, no quarantine
    index = resize_chunk(validated, 0, out, ResizeConfig(size=8))  # the disk has room again: the rerun recovers them
    assert index.set_index("id_str")["reason"].fillna("ok").to_dict() == {"a": "ok", "b": "ok", "c": "unreadable_image"}
    assert (out / "a.png").is_file() and (out / "b.png").is_file() and not (out / "c.png").exists()


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

"""FITS cutouts: synthetic galaxies with known fluxes in g, r, z, stretched to RGB; bad FITS files quarantined with reasons."""

import gzip
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from conftest import REPO, run_snakemake
from PIL import Image

from zoobot_core.fits_images import BadImage, FitsConfig, is_fits, load_fits_rgb, read_fits_planes
from zoobot_core.images import ResizeConfig, load_rgb
from zoobot_core.schemas import get_tree

SIZE = 48
FLUX = {"g": 0.4, "r": 1.0, "z": 1.6}  # peak surface brightness per band (nanomaggy-like units)


def _shard_chunk(rows: pd.DataFrame, folder, config: ResizeConfig) -> pd.DataFrame:
    """`rows` (id_str, file_loc, chunk 0) written into one chunk's shards as the shard jobs write them: per galaxy,
    its quarantine reason (None when its image is in the shards)."""
    from zoobot_core.chunk_shards import write_chunk_shards
    from zoobot_core.shards import ShardSettings

    manifest = write_chunk_shards(rows, 0, folder, ShardSettings(size=config.size, image_encoding="raw"), config)
    unreadable = pd.read_parquet(folder / "unreadable.parquet")
    reasons = dict(zip(unreadable["id_str"], unreadable["reason"]))
    assert set(manifest["id_str"]).isdisjoint(reasons) and set(manifest["id_str"]) | set(reasons) == set(rows["id_str"])
    return pd.DataFrame({"id_str": rows["id_str"].to_numpy(), "reason": [reasons.get(i) for i in rows["id_str"]]})


def _galaxy(peak: float, size: int = SIZE, centre: tuple[float, float] | None = None, sigma: float = 5.0) -> np.ndarray:
    """A round Gaussian galaxy of the given peak brightness on a zero sky."""
    y, x = np.mgrid[:size, :size]
    cy, cx = centre or ((size - 1) / 2, (size - 1) / 2)
    return peak * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def _grz(scale: float = 1.0, **kw) -> np.ndarray:
    """A (3, y, x) g, r, z cube, as Legacy Survey FITS cutouts are laid out."""
    return np.stack([_galaxy(FLUX[b] * scale, **kw) for b in "grz"]).astype(np.float32)


def _write(path, data, extname=None, empty_primary=False) -> str:
    hdus = [fits.PrimaryHDU()] if empty_primary else []
    hdus.append(fits.ImageHDU(data, name=extname) if empty_primary else fits.PrimaryHDU(data))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


ZRG = FitsConfig(bands=(2, 1, 0))  # z as red, r as green, g as blue


def test_colours_follow_the_band_fluxes(tmp_path):
    rgb = np.asarray(load_fits_rgb(_write(tmp_path / "g.fits", _grz()), ZRG), dtype=float)
    centre = rgb[SIZE // 2, SIZE // 2]
    # Lupton's stretch scales all three bands by one factor of their summed intensity: colour ratios are kept
    np.testing.assert_allclose(centre / centre[0], [1.0, FLUX["r"] / FLUX["z"], FLUX["g"] / FLUX["z"]], atol=0.02)
    assert rgb[0, 0].max() == 0  # empty sky is black
    again = np.asarray(load_fits_rgb(_write(tmp_path / "g2.fits", _grz()[[2, 1, 0]]), FitsConfig(bands=(0, 1, 2))), dtype=float)
    np.testing.assert_array_equal(again, rgb)  # planes already z, r, g shown in file order: the same picture


def test_a_three_plane_cube_needs_bands_set(tmp_path):
    """bands null would show a g, r, z cube as R = g, B = z, the reverse of the usual colours: refused, naming the file
    and the setting, rather than guessed; one plane needs no bands."""
    path = _write(tmp_path / "grz.fits", _grz())
    with pytest.raises(BadImage, match=re.escape("set images.fits.bands")) as raised:
        read_fits_planes(path, FitsConfig())
    assert raised.value.reason == "fits_bands" and path in str(raised.value) and "[2, 1, 0]" in str(raised.value)
    index = _shard_chunk(pd.DataFrame({"id_str": ["g"], "file_loc": [path], "chunk": 0}), tmp_path / "chunk", ResizeConfig(size=16))
    assert index["reason"].tolist() == ["fits_bands"]  # quarantined with the reason, not shown reversed
    assert read_fits_planes(_write(tmp_path / "one.fits", _galaxy(1.0)), FitsConfig()).shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(read_fits_planes(path, ZRG), _grz()[[2, 1, 0]])  # R = z, G = r, B = g


def test_the_stretch_is_absolute_brighter_galaxies_look_brighter(tmp_path):
    faint = np.asarray(load_fits_rgb(_write(tmp_path / "f.fits", _grz(0.25)), ZRG), dtype=float)
    bright = np.asarray(load_fits_rgb(_write(tmp_path / "b.fits", _grz(1.0)), ZRG), dtype=float)
    assert bright[SIZE // 2, SIZE // 2].sum() > faint[SIZE // 2, SIZE // 2].sum() * 1.5
    # asinh: compresses the bright end, so a 4x brighter core is less than 4x brighter on screen
    assert bright[SIZE // 2, SIZE // 2].sum() < faint[SIZE // 2, SIZE // 2].sum() * 4


def test_scales_q_and_minimum_do_what_the_config_says(tmp_path):
    path = _write(tmp_path / "g.fits", _grz())
    base = np.asarray(load_fits_rgb(path, ZRG), dtype=float)[SIZE // 2, SIZE // 2]
    blue_up = np.asarray(load_fits_rgb(path, FitsConfig(bands=(2, 1, 0), scales=(1.0, 1.0, 4.0))), dtype=float)[SIZE // 2, SIZE // 2]
    assert blue_up[2] / blue_up[0] == pytest.approx(4 * base[2] / base[0], rel=0.05)
    linear = np.asarray(load_fits_rgb(path, FitsConfig(bands=(2, 1, 0), q=0.0, stretch=4.0)), dtype=float)
    half = np.unravel_index(np.argmin(np.abs(_galaxy(FLUX["z"]) - 1.0)), (SIZE, SIZE))  # where z = 1.0 = a quarter of 4
    assert linear[SIZE - 1 - half[0], half[1], 0] == pytest.approx(255 * 1.0 / 4.0, abs=6)


def test_minimum_is_the_black_point_where_the_stretch_starts(tmp_path):
    """minimum is subtracted before the stretch: pixels at or below it are black, the rest shown as (value - minimum)."""
    row = np.array([[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 9.0]])
    path = _write(tmp_path / "row.fits", row)
    linear = {"stretch": 4.0, "q": 0.0}  # 255 * (value - minimum) / 4, up to 255
    grey = {m: np.asarray(load_fits_rgb(path, FitsConfig(minimum=m, **linear)))[0, :, 0].tolist() for m in (0.0, 1.0)}
    assert grey[0.0] == [0, 31, 63, 95, 127, 191, 255]
    assert grey[1.0] == [0, 0, 0, 31, 63, 127, 255]  # 1.0 and below black; 2.0 looks as 1.0 did with minimum 0
    shifted = _write(tmp_path / "shifted.fits", row - 1.0)
    for q in (0.0, 8.0):  # the asinh stretch too starts at minimum: raising it is subtracting it from the data
        np.testing.assert_array_equal(load_fits_rgb(path, FitsConfig(minimum=1.0, stretch=4.0, q=q)), load_fits_rgb(shifted, FitsConfig(stretch=4.0, q=q)))
    assert read_fits_planes(path, FitsConfig(minimum=1.0)).tolist() == [row.tolist()]  # the data themselves are not clipped


def test_one_band_is_grey_and_north_is_up(tmp_path):
    data = _galaxy(1.0, centre=(8.0, 24.0))  # FITS row 8: near the bottom of the sky
    rgb = np.asarray(load_fits_rgb(_write(tmp_path / "one.fits", data), FitsConfig()))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.unravel_index(rgb[..., 0].argmax(), rgb.shape[:2]) == (SIZE - 1 - 8, 24)  # shown near the bottom


def test_negative_sky_is_black_not_wrapped(tmp_path):
    rng = np.random.default_rng(0)
    data = _grz() + rng.normal(0, 0.05, (3, SIZE, SIZE)).astype(np.float32)  # sky-subtracted noise: half negative
    rgb = np.asarray(load_fits_rgb(_write(tmp_path / "noisy.fits", data), ZRG))
    negative = (data[[2, 1, 0]].max(axis=0) < 0)[::-1]
    assert negative.sum() > 100 and rgb[negative].max() == 0


def test_gzip_extensions_and_multi_extension_files_are_read(tmp_path):
    plain = _write(tmp_path / "g.fits", _grz())
    with open(plain, "rb") as src, gzip.open(tmp_path / "g.fits.gz", "wb") as dst:
        dst.write(src.read())
    mef = _write(tmp_path / "mef.fits", _grz(), extname="IMAGE", empty_primary=True)  # data in extension 1, as many surveys do
    expected = np.asarray(load_fits_rgb(plain, ZRG))
    for path, config in [(tmp_path / "g.fits.gz", ZRG), (mef, ZRG), (mef, FitsConfig(hdu="IMAGE", bands=(2, 1, 0))), (mef, FitsConfig(hdu=1, bands=(2, 1, 0)))]:
        assert is_fits(path)
        np.testing.assert_array_equal(np.asarray(load_fits_rgb(path, config)), expected)
    resized = load_rgb(tmp_path / "g.fits.gz", 32, fits=ZRG)
    assert resized.size == (32, 32) and resized.mode == "RGB"
    png = tmp_path / "not_fits.png"
    Image.new("RGB", (8, 8)).save(png)
    assert not is_fits(png)


@pytest.mark.parametrize(
    ("data", "config", "reason", "message"),
    [
        (_grz(), {"hdu": 3}, "fits_missing_hdu", "has no HDU 3"),
        (_grz(), {"hdu": "SCI"}, "fits_missing_hdu", "has no HDU 'SCI'"),
        (_grz()[:2], {}, "fits_bands", "2 planes; set images.fits.bands"),
        (_grz(), {}, "fits_bands", "3 planes and images.fits.bands is null; set images.fits.bands"),
        (_grz(), {"bands": (0, 1, 5)}, "fits_bands", "asks for planes [0, 1, 5], the file has 3"),
        (_galaxy(1.0), {"scales": (1.0, 2.0, 3.0)}, "fits_bands", "1 bands but 3 images.fits.scales"),
        (np.where(_galaxy(1.0) > 0.5, np.nan, _galaxy(1.0)), {}, "fits_nonfinite", "of pixels are NaN or infinite"),
        (np.zeros((3, SIZE, SIZE), np.float32), {"bands": (0, 1, 2)}, "blank_image", "every pixel is 0"),
        (np.zeros((2, 3, SIZE, SIZE), np.float32), {}, "fits_bands", "need (y, x) or (bands, y, x)"),
    ],
    ids=["hdu-index", "hdu-name", "two-planes", "three-planes-no-bands", "band-out-of-range", "scales-count", "nan", "all-zero", "4d"],
)
def test_bad_fits_files_are_refused_with_their_reason(tmp_path, data, config, reason, message):
    path = _write(tmp_path / "bad.fits", data)
    with pytest.raises(BadImage, match=re.escape(message)) as raised:
        read_fits_planes(path, FitsConfig(**config))
    assert raised.value.reason == reason and str(path) in str(raised.value)


def test_a_few_nan_pixels_can_be_allowed_and_are_black(tmp_path):
    data = _grz()
    data[:, 0, :4] = np.nan  # 4 of 2304 pixels per band
    path = _write(tmp_path / "edge.fits", data)
    with pytest.raises(BadImage, match="0.2% of pixels"):
        read_fits_planes(path, ZRG)
    rgb = np.asarray(load_fits_rgb(path, FitsConfig(bands=(2, 1, 0), max_nonfinite_fraction=0.01)))
    assert rgb[SIZE - 1, :4].max() == 0 and rgb[SIZE // 2, SIZE // 2].max() > 100
    # black whatever the scales and minimum: they are painted after scaling
    scaled = FitsConfig(bands=(2, 1, 0), scales=(3.0, 2.0, 5.0), minimum=0.05, max_nonfinite_fraction=0.01)
    assert read_fits_planes(path, scaled)[:, 0, :4].tolist() == [[0.05] * 4] * 3
    assert np.asarray(load_fits_rgb(path, scaled))[SIZE - 1, :4].max() == 0


def test_corrupt_fits_is_unreadable_not_a_crash(tmp_path):
    good = _write(tmp_path / "g.fits", _grz())
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(open(good, "rb").read()[:4000])  # header and part of the data
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"SIMPLE  = nonsense" + b"\x00" * 100)
    for path in (truncated, garbage):
        with pytest.raises(BadImage) as raised:
            read_fits_planes(path, ZRG)
        assert raised.value.reason == "unreadable_image"
    # a .fits.gz cut short, in its first bytes or in its data, or with corrupt deflate data: quarantined, the chunk goes on
    compressed = gzip.compress(open(good, "rb").read())
    (tmp_path / "short.fits.gz").write_bytes(compressed[:12])
    (tmp_path / "cut.fits.gz").write_bytes(compressed[: len(compressed) // 2])
    (tmp_path / "bad.fits.gz").write_bytes(compressed[:10] + bytes(b ^ 0xFF for b in compressed[10:200]) + compressed[200:])
    validated = pd.DataFrame({"id_str": ["s", "c", "b"], "file_loc": [str(tmp_path / n) for n in ("short.fits.gz", "cut.fits.gz", "bad.fits.gz")], "chunk": 0})
    index = _shard_chunk(validated, tmp_path / "chunk", ResizeConfig(size=16, fits={"bands": [2, 1, 0]}))
    assert index["reason"].tolist() == ["unreadable_image"] * 3


def test_fits_config_mistakes_are_caught_when_the_config_is_read():
    with pytest.raises(ValueError, match="1 \\(greyscale\\) or 3"):
        FitsConfig(bands=(0, 1))
    with pytest.raises(ValueError, match="one value per band"):
        FitsConfig(bands=(2, 1, 0), scales=(1.0,))
    assert ResizeConfig(fits={"bands": [2, 1, 0]}).fits == ZRG  # as the rule's params give it


def _fits_catalog(folder):
    """Six FITS galaxies (one gzip-compressed) and four bad FITS files, with the reasons they must be quarantined for."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, expected = [], {}
    for i in range(6):
        name = f"gal{i}.fits" + (".gz" if i == 0 else "")
        fits.PrimaryHDU(_grz(0.5 + 0.3 * i, centre=(20 + i, 24))).writeto(folder / name, overwrite=True)
        rows.append({"id_str": f"G{i}", "file_loc": name})
    bad = {
        "B_nan": (np.full((3, SIZE, SIZE), np.nan, np.float32), "fits_nonfinite"),
        "B_zero": (np.zeros((3, SIZE, SIZE), np.float32), "blank_image"),
        "B_two": (_grz()[:2], "fits_bands"),
    }
    for id_str, (data, reason) in bad.items():
        fits.PrimaryHDU(data).writeto(folder / f"{id_str}.fits")
        rows.append({"id_str": id_str, "file_loc": f"{id_str}.fits"})
        expected[id_str] = reason
    (folder / "B_cut.fits").write_bytes((folder / "gal1.fits").read_bytes()[:3000])
    rows.append({"id_str": "B_cut", "file_loc": "B_cut.fits"})
    expected["B_cut"] = "unreadable_image"
    return pd.DataFrame(rows), expected


def test_resizing_a_fits_catalog_quarantines_each_bad_file_with_its_reason(tmp_path):
    catalog, expected = _fits_catalog(tmp_path / "cutouts")
    validated = catalog.assign(file_loc=[str(tmp_path / "cutouts" / f) for f in catalog["file_loc"]], row=range(len(catalog)), chunk=0, labelled=False)
    from zoobot_core.chunk_shards import gather_chunk_files
    from zoobot_core.image_source import ShardImages

    index = _shard_chunk(validated, tmp_path / "shards/chunk_0", ResizeConfig(size=32, fits={"bands": [2, 1, 0]}))
    validated.to_parquet(tmp_path / "validated.parquet")
    pd.DataFrame(columns=["row", "id_str", "file_loc", "stage", "reason", "message"]).astype({"row": "int64"}).to_parquet(tmp_path / "empty.parquet")
    gather_chunk_files(tmp_path / "validated.parquet", tmp_path / "empty.parquet", [str(tmp_path / "shards/chunk_0")], tmp_path / "ready.parquet",
                       tmp_path / "quarantine.parquet", tmp_path / "accounting.json", 1.0)
    ready, quarantine = pd.read_parquet(tmp_path / "ready.parquet"), pd.read_parquet(tmp_path / "quarantine.parquet")
    assert sorted(ready["id_str"]) == [f"G{i}" for i in range(6)] and index["reason"].isna().sum() == 6
    assert dict(zip(quarantine["id_str"], quarantine["reason"])) == expected
    assert quarantine["message"].str.contains("cutouts/B_").all()
    rows, images = next(ShardImages(ready, tmp_path / "shards").batches(None, 8))
    assert images.shape == (6, 32, 32, 3) and images.max() > 0  # the good ones, resized into the shards as RGB


@pytest.mark.workflow
def test_a_fits_catalog_runs_through_the_workflow_with_its_quarantine_accounted(tmp_path):
    catalog, expected = _fits_catalog(tmp_path / "cutouts")
    catalog = catalog.assign(**{column: None for column in get_tree("gz_decals_dr5").label_cols})  # unlabelled: to be predicted
    catalog.to_csv(tmp_path / "cutouts" / "catalog.csv", index=False)
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["run_name"] = "fits"
    config["synthetic"]["enabled"] = False
    config["catalog"] = {
        "path": str(tmp_path / "cutouts" / "catalog.csv"), "id_column": "id_str", "file_column": "file_loc", "image_root": None,
        "tree": "gz_decals_dr5", "question_suffix": "", "allow_unlabelled": True, "max_quarantine_fraction": 0.5,
    }
    config["images"]["fits"] = {"bands": [2, 1, 0], "stretch": 0.5, "q": 8.0}
    (tmp_path / "fits.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path / "work", tmp_path / "fits.yaml", "results/fits/catalog/accounting.json")
    out = tmp_path / "work/results/fits/catalog"
    counts = json.loads((out / "accounting.json").read_text())
    assert counts["n_in"] == 10 and counts["n_ok"] == 6
    assert counts["quarantined_by_reason"] == {"blank_image": 1, "fits_bands": 1, "fits_nonfinite": 1, "unreadable_image": 1}
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert dict(zip(quarantine["id_str"], quarantine["reason"])) == expected


def test_a_file_system_error_reading_fits_stops_the_job_instead_of_quarantining(tmp_path, monkeypatch):
    """The one policy of images.unreadable_reason holds for FITS too: EIO is the machine's fault, a corrupt file the file's."""
    import errno

    from zoobot_core.images import MachineError

    path = _write(tmp_path / "g.fits", _grz())
    rows = pd.DataFrame({"id_str": ["g"], "file_loc": [path], "chunk": 0})

    def failing_open(name, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(name))

    with monkeypatch.context() as patch:
        patch.setattr(fits, "open", failing_open)
        with pytest.raises(MachineError, match=re.escape(f"reading {path} into a shard")):
            _shard_chunk(rows, tmp_path / "chunk", ResizeConfig(size=16, fits=ZRG))
    assert not (tmp_path / "chunk").exists()
    index = _shard_chunk(rows, tmp_path / "chunk", ResizeConfig(size=16, fits=ZRG))
    assert index["reason"].isna().all()

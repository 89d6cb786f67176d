from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from zoobot_core.schemas import get_tree
from zoobot_core.synthetic import SyntheticConfig, make_synthetic_catalog


def test_same_seed_gives_identical_catalog_and_images(tmp_path):
    a = make_synthetic_catalog(tmp_path / "a", SyntheticConfig(n_galaxies=12, image_size=48, seed=3, n_broken=0))
    b = make_synthetic_catalog(tmp_path / "b", SyntheticConfig(n_galaxies=12, image_size=48, seed=3, n_broken=0))
    pd.testing.assert_frame_equal(a, b)
    for rel in a["file_loc"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    c = make_synthetic_catalog(tmp_path / "c", SyntheticConfig(n_galaxies=12, image_size=48, seed=4, n_broken=0))
    assert not a["smooth-or-featured_smooth"].equals(c["smooth-or-featured_smooth"])


def test_a_galaxy_does_not_depend_on_how_many_are_drawn(tmp_path):
    small = make_synthetic_catalog(tmp_path / "s", SyntheticConfig(n_galaxies=5, image_size=32, n_broken=0))
    large = make_synthetic_catalog(tmp_path / "l", SyntheticConfig(n_galaxies=9, image_size=32, n_broken=0))
    pd.testing.assert_frame_equal(small, large.iloc[:5])


def _assert_votes_follow(tree, catalog: pd.DataFrame) -> None:
    """Root questions get 30-45 volunteers; every other question's total is its parent answer's count."""
    for question in tree.questions:
        total = catalog[[tree.column(question.name, a) for a in question.answers]].sum(axis=1)
        if question.asked_if is None:
            assert total.between(30, 45).all()
        else:
            np.testing.assert_array_equal(total, catalog[tree.column(*question.asked_if)])


def test_votes_follow_the_decision_tree(tiny_synthetic):
    tree = get_tree("gz_decals_dr5")
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    labelled = catalog.dropna(subset=tree.label_cols)
    assert 0 < len(labelled) < len(catalog)  # some are unlabelled
    _assert_votes_follow(tree, labelled)
    smooth = labelled["true_smooth-or-featured"] == "smooth"
    frac_smooth = labelled["smooth-or-featured_smooth"] / labelled[[f"smooth-or-featured_{a}" for a in ("smooth", "featured-or-disk", "artifact")]].sum(axis=1)
    assert frac_smooth[smooth].mean() > 0.6 > frac_smooth[~smooth].mean()


def test_images_are_rgb_of_the_requested_size_and_broken_rows_are_broken(tiny_synthetic):
    catalog = pd.read_csv(tiny_synthetic / "catalog.csv")
    good = catalog.iloc[0]
    with Image.open(tiny_synthetic / good["file_loc"]) as img:
        assert img.mode == "RGB" and img.size == (64, 64)
    assert not (tiny_synthetic / catalog.iloc[-1]["file_loc"]).exists()  # missing_file
    assert (tiny_synthetic / catalog.iloc[-2]["file_loc"]).stat().st_size == 0  # empty_file


def test_any_tree_gets_votes_that_follow_it_and_the_decals_galaxies_stay_the_same(tmp_path):
    """A made-up tree's votes follow its dependencies and its reached questions get a true answer; the images are the
    same galaxies as under the DECaLS tree (the extra draws use their own random stream)."""
    made_up = Path(__file__).parent / "configs" / "made_up_tree.yaml"
    tree = get_tree(str(made_up))
    mine = make_synthetic_catalog(tmp_path / "m", SyntheticConfig(n_galaxies=30, image_size=32, n_broken=0, unlabelled_fraction=0.0, tree=str(made_up)))
    decals = make_synthetic_catalog(tmp_path / "d", SyntheticConfig(n_galaxies=30, image_size=32, n_broken=0, unlabelled_fraction=0.0))
    assert set(tree.label_cols) <= set(mine.columns) and "bar_strong" not in mine.columns
    _assert_votes_follow(tree, mine)
    reached = mine["true_ring"] == "yes"
    assert 0 < reached.sum() < len(mine)
    assert mine.loc[reached, "true_ring-kind"].isin(["inner", "outer", "both", "nuclear"]).all()
    assert mine.loc[~reached, "true_ring-kind"].isna().all() and mine["true_lens"].notna().all()
    pd.testing.assert_series_equal(mine["true_smooth-or-featured"], decals["true_smooth-or-featured"])
    assert all((tmp_path / "m" / rel).read_bytes() == (tmp_path / "d" / rel).read_bytes() for rel in mine["file_loc"])

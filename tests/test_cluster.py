import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_core.cluster import ClusterConfig, cluster_representations, plot_montage, typical_members


def _blobs(n_per=30, centres=3, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(c * 10.0, 1.0, (n_per, dim)) for c in range(centres)]).astype(np.float32)
    table = pd.DataFrame(features, columns=[f"feat_{i:02d}" for i in range(dim)])
    table.insert(0, "id_str", [f"g{i}" for i in range(len(table))])
    return table, np.repeat(np.arange(centres), n_per)


def test_well_separated_groups_are_recovered():
    table, truth = _blobs()
    clusters = cluster_representations(table, ClusterConfig(n_components=5, n_clusters=3))
    assert len(clusters) == 90 and list(clusters["id_str"]) == list(table["id_str"])
    contingency = pd.crosstab(clusters["cluster"], truth)
    assert (contingency.max(axis=1) == 30).all()  # every cluster is exactly one group
    assert [c for c in clusters.columns if c.startswith("pca_")] == [f"pca_{i:02d}" for i in range(5)]


def test_clustering_is_repeatable_for_a_seed():
    table, _ = _blobs(seed=1)
    a = cluster_representations(table, ClusterConfig(n_clusters=4, seed=3))
    b = cluster_representations(table, ClusterConfig(n_clusters=4, seed=3))
    pd.testing.assert_frame_equal(a, b)


def test_too_few_galaxies_is_a_clear_error():
    table, _ = _blobs(n_per=2, centres=1)
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_representations(table, ClusterConfig(n_clusters=5))


def test_montage_shows_the_most_typical_members(tmp_path):
    table, _ = _blobs(n_per=6)
    clusters = cluster_representations(table, ClusterConfig(n_components=3, n_clusters=3))
    members = typical_members(clusters, 2)
    assert all(len(ids) == 2 for ids in members.values())
    for cid, ids in members.items():
        assert clusters.set_index("id_str").loc[ids, "distance"].max() <= clusters.loc[clusters["cluster"] == cid, "distance"].nsmallest(2).max()
    paths = {}
    for i, id_str in enumerate(table["id_str"]):
        paths[id_str] = str(tmp_path / f"{id_str}.png")
        Image.new("RGB", (16, 16), (i * 10 % 255, 0, 0)).save(paths[id_str])
    plot_montage(clusters, paths, tmp_path / "montage.png", 4)
    with Image.open(tmp_path / "montage.png") as img:
        assert img.format == "PNG" and img.size[1] > img.size[0] * 0.5


def test_hdbscan_finds_the_number_of_groups_and_marks_outliers_as_noise():
    table, truth = _blobs(n_per=40, centres=4)
    outlier = pd.DataFrame([[f"far{i}", *np.full(64, 500.0 + 100 * i, np.float32)] for i in range(2)], columns=table.columns)
    clusters = cluster_representations(pd.concat([table, outlier], ignore_index=True), ClusterConfig(n_components=5, method="hdbscan", min_cluster_size=10))
    found = clusters.iloc[:160]
    assert found["cluster"].nunique() == 4 and (pd.crosstab(found["cluster"], truth).max(axis=1) == 40).all()
    assert (clusters.iloc[160:]["cluster"] == -1).all() and clusters.iloc[160:]["distance"].isna().all()
    assert -1 not in typical_members(clusters, 3)


def test_an_unknown_method_is_refused():
    table, _ = _blobs()
    with pytest.raises(ValueError, match="hdbscan"):
        cluster_representations(table, ClusterConfig(method="dbscan"))


def test_the_cluster_rule_reads_split_files_into_the_same_clusters_as_one_table(tmp_path):
    """read_representations + cluster_features (the rule: one matrix, standardized in place) give exactly what
    cluster_representations gives on the concatenated table, whose own data is left untouched."""
    from zoobot_core.cluster import ClusterConfig, cluster_features, cluster_representations, read_representations

    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(300, 24)).astype(np.float32), columns=[f"feat_{i:02d}" for i in range(24)])
    table.insert(0, "id_str", [f"g{i}" for i in range(300)])
    before = table.copy()
    paths = []
    for split, rows in (("train", slice(0, 200)), ("val", slice(200, 260)), ("test", slice(260, 300))):
        paths.append(tmp_path / f"{split}.parquet")
        table.iloc[rows].to_parquet(paths[-1], index=False, row_group_size=64)
    ids, splits, features = read_representations(paths)
    assert ids.tolist() == table["id_str"].tolist() and splits.tolist() == ["train"] * 200 + ["val"] * 60 + ["test"] * 40
    config = ClusterConfig(n_clusters=4, n_components=5, seed=1)
    pd.testing.assert_frame_equal(cluster_features(ids, features, config), cluster_representations(table, config))
    pd.testing.assert_frame_equal(table, before)


def _representations(n: int = 50, dim: int = 12, seed: int = 0) -> pd.DataFrame:
    """A representation table as predict writes it: id_str, then feat_00... (zero-padded to the widest index)."""
    table = pd.DataFrame(np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32), columns=[f"feat_{i:02d}" for i in range(dim)])
    table.insert(0, "id_str", [f"g{seed}_{i}" for i in range(n)])
    return table


def test_representations_are_read_by_column_name_whatever_the_column_order(tmp_path):
    """Features come out in feat_ order and ids from id_str, whether id_str comes last, the feature columns are shuffled
    or a non-feature column sits among them; files with different layouts read into one matrix."""
    from zoobot_core.cluster import feature_matrix, read_representations

    train, val = _representations(seed=0), _representations(n=30, seed=1)
    train.to_parquet(tmp_path / "predict.parquet", index=False)
    expected_ids, _, expected = read_representations([tmp_path / "predict.parquet"])
    np.testing.assert_array_equal(expected, train.drop(columns="id_str").to_numpy())
    feats = [c for c in train.columns if c.startswith("feat_")]
    layouts = {
        "id_last": train[[*feats, "id_str"]],
        "shuffled": train[["id_str", *np.random.default_rng(1).permutation(feats)]],
        "extra": train[feats[:5]].assign(split="train", id_str=train["id_str"]).join(train[feats[5:]]),
    }
    for name, table in layouts.items():
        table.to_parquet(tmp_path / f"{name}.parquet", index=False, row_group_size=16)
        ids, splits, features = read_representations([tmp_path / f"{name}.parquet"])
        assert ids.tolist() == expected_ids.tolist() and splits.tolist() == [name] * len(train), name
        np.testing.assert_array_equal(features, expected, err_msg=name)
    val[["id_str", *feats]][[*feats[::-1], "id_str"]].to_parquet(tmp_path / "val.parquet", index=False)
    ids, splits, features = read_representations([tmp_path / "id_last.parquet", tmp_path / "val.parquet"])
    np.testing.assert_array_equal(features, np.concatenate([expected, val[feats].to_numpy()]))
    assert ids.tolist() == train["id_str"].tolist() + val["id_str"].tolist()
    np.testing.assert_array_equal(feature_matrix(layouts["shuffled"]), expected)  # the in-memory table too


def test_representation_tables_of_another_layout_are_refused_naming_the_file(tmp_path):
    from zoobot_core.cluster import read_representations

    good = tmp_path / "train.parquet"
    _representations().to_parquet(good, index=False)
    bad = {
        "no_features": (_representations()[["id_str"]].assign(score=1.0), "has no feat_* columns"),
        "no_ids": (_representations().drop(columns="id_str"), "has no id_str column"),
        "fewer_features": (_representations().drop(columns="feat_11"), "feat_* columns differ from"),
        "gap": (_representations().drop(columns="feat_03"), "feat_00 ... feat_11 with feat_03 missing"),
        "text_feature": (_representations().assign(feat_05="x"), "column feat_05 is not a number"),
        "bad_name": (_representations().rename(columns={"feat_02": "feat_two"}), "feat_two is not named feat_<number>"),
    }
    for name, (table, message) in bad.items():
        path = tmp_path / f"{name}.parquet"
        table.to_parquet(path, index=False)
        paths = [good, path] if name == "fewer_features" else [path]
        with pytest.raises(ValueError, match=re.escape(message)) as raised:
            read_representations(paths)
        assert str(path) in str(raised.value) and "predict" in str(raised.value), name


def test_the_clustering_benchmark_runs_at_a_tiny_size():
    """tests/benchmarks/bench_cluster.py (make bench), so it cannot rot: timing, HDBSCAN and the rule's peak memory."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "benchmarks" / "bench_cluster.py"
    result = subprocess.run([sys.executable, str(script), "--n", "3000", "--dims", "64", "--hdbscan-n", "500", "--memory-n", "3000"],
                            check=True, capture_output=True, text=True, timeout=600)
    assert "peak resident memory, MB" in result.stdout and "adjusted Rand index" in result.stdout


def test_standardizing_in_place_matches_scikit_learns_scaler():
    from sklearn.preprocessing import StandardScaler

    from zoobot_core.cluster import standardize_in_place

    x = np.random.default_rng(0).normal(3, 2, (5000, 16)).astype(np.float32)
    x[:, 5] = 7.0  # a constant column stays 0, not NaN
    expected = StandardScaler().fit_transform(x)
    ours = standardize_in_place(x, rows=700)  # blocks that do not divide the rows
    assert ours is x and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)

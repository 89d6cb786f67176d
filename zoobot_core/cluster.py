"""Cluster representations (PCA, then KMeans or HDBSCAN) and show each cluster's most typical galaxies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from zoobot_core.images import ImageViewer, ResizeConfig, view_file
from zoobot_core.io import streamed_parquet

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """PCA dimensions, number of clusters, and montage size."""

    n_components: int = 10
    n_clusters: int = 8  # KMeans
    seed: int = 42
    examples_per_cluster: int = 8
    method: str = "kmeans"  # 'kmeans' or 'hdbscan' (finds the number of clusters; -1 marks noise)
    min_cluster_size: int = 10  # HDBSCAN


def feature_matrix(representations: pd.DataFrame) -> np.ndarray:
    """The feat_* columns as a float32 matrix, in feature-number order whatever the table's column order."""
    cols = sorted((c for c in representations.columns if c.startswith("feat_")), key=lambda c: (len(c), c))
    if not cols:
        raise ValueError("Representation table has no feat_* columns; pass the output of predict")
    return representations[cols].to_numpy(np.float32)


def representation_columns(path: str | Path, schema: pa.Schema) -> list[str]:
    """The feat_* columns of a representation file in feature order, after checking its layout (id_str, feat_0 ... feat_n-1)."""
    import pyarrow as pa

    fix = "pass the predict rule's representations (results/<run>/representations/<split>.parquet: id_str, feat_0000 ...)"
    if "id_str" not in schema.names:
        raise ValueError(f"{path} has no id_str column; {fix}")
    feats = [name for name in schema.names if name.startswith("feat_")]
    if not feats:
        raise ValueError(f"{path} has no feat_* columns; {fix}")
    for name in feats:
        if not name[len("feat_"):].isdigit():
            raise ValueError(f"{path}: column {name} is not named feat_<number>; rename or drop it, or {fix}")
        kind = schema.field(name).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            raise ValueError(f"{path}: column {name} is not a number ({kind}); {fix}")
    feats.sort(key=lambda name: int(name[len("feat_"):]))
    numbers = [int(name[len("feat_"):]) for name in feats]
    if numbers != list(range(len(feats))):
        missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
        detail = f"with feat_{missing[0]:0{len(feats[0]) - 5}d} missing" if missing else "numbered twice"
        raise ValueError(f"{path}: columns {feats[0]} ... {feats[-1]} {detail}; {fix}")
    return feats


def read_representations(paths: list[str | Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, split names, features) of the predict rule's representation files (one per split, named <split>.parquet),
    the features read batch by batch into one float32 matrix: memory is the matrix, not copies of tables."""
    files = [streamed_parquet(p) for p in paths]
    cols = representation_columns(paths[0], files[0].schema_arrow) if files else []
    for path, file in zip(paths[1:], files[1:]):
        if representation_columns(path, file.schema_arrow) != cols:
            raise ValueError(
                f"{path}: its feat_* columns differ from those of {paths[0]} ({cols[0]} ... {cols[-1]}); "
                "cluster representations of one model, as the predict rule writes them"
            )
    n = sum(f.metadata.num_rows for f in files)
    features = np.empty((n, len(cols)), np.float32)
    ids, splits, row = [], [], 0
    for path, file in zip(paths, files):
        for batch in file.iter_batches(batch_size=16384, columns=["id_str", *cols]):
            rows = slice(row, row + batch.num_rows)
            for j, col in enumerate(cols):  # by name, in feat_ number order, whatever the order of the file's columns
                features[rows, j] = batch.column(col).to_numpy(zero_copy_only=False)
            ids += batch.column("id_str").to_pylist()
            row += batch.num_rows
        splits += [Path(path).stem] * file.metadata.num_rows
    return np.asarray(ids, dtype=object), np.asarray(splits, dtype=object), features


def cluster_representations(representations: pd.DataFrame, config: ClusterConfig) -> pd.DataFrame:
    """Table of id_str, cluster, distance to its centre, and PCA coordinates (pca_00...)."""
    features = np.array(feature_matrix(representations), dtype=np.float32, copy=True)  # cluster_features scales it in place
    return cluster_features(representations["id_str"].to_numpy(), features, config)


def cluster_features(ids: np.ndarray, features: np.ndarray, config: ClusterConfig) -> pd.DataFrame:
    """cluster_representations on a float32 matrix, which it standardizes in place (no copy of it is made)."""
    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.decomposition import PCA

    if config.method not in ("kmeans", "hdbscan"):
        raise ValueError(f"cluster.method must be 'kmeans' or 'hdbscan', got {config.method!r}")
    n = len(features)
    if config.method == "kmeans" and n < config.n_clusters:
        raise ValueError(f"Cannot make {config.n_clusters} clusters from {n} galaxies; lower cluster.n_clusters")
    n_components = min(config.n_components, n, features.shape[1])
    scaled = standardize_in_place(features)
    pca = PCA(n_components=n_components, random_state=config.seed, copy=False)
    reduced = pca.fit_transform(scaled)
    if config.method == "kmeans":
        labels = KMeans(n_clusters=config.n_clusters, n_init=10, random_state=config.seed).fit(reduced).labels_
    else:
        labels = HDBSCAN(min_cluster_size=config.min_cluster_size, copy=True).fit(reduced).labels_
    centres = {c: reduced[labels == c].mean(axis=0) for c in np.unique(labels) if c >= 0}
    distances = np.array([np.linalg.norm(x - centres[c]) if c >= 0 else np.nan for x, c in zip(reduced, labels)])
    table = pd.DataFrame({"id_str": ids, "cluster": labels.astype(np.int32), "distance": distances.astype(np.float32)})
    for i in range(n_components):
        table[f"pca_{i:02d}"] = reduced[:, i].astype(np.float32)
    log.info("PCA kept %.1f%% of the variance in %d components; %s cluster sizes %s%s",
             100 * pca.explained_variance_ratio_.sum(), n_components, config.method, np.bincount(labels[labels >= 0]).tolist(),
             f", {int((labels < 0).sum())} noise" if (labels < 0).any() else "")
    return table


def standardize_in_place(features: np.ndarray, rows: int = 16384) -> np.ndarray:
    """Each column to zero mean and unit variance (statistics in float64, a constant column left unscaled), as
    scikit-learn's StandardScaler does, but in place and a block of rows at a time: its fit alone makes float64
    copies of the whole matrix (4-5 GB at 300,000 x 1280), this makes none."""
    n = len(features)
    blocks = [slice(start, start + rows) for start in range(0, n, rows)]
    mean = sum((features[b].sum(axis=0, dtype=np.float64) for b in blocks), np.zeros(features.shape[1])) / max(n, 1)
    squares = sum((((features[b] - mean) ** 2).sum(axis=0) for b in blocks), np.zeros(features.shape[1]))
    scale = np.sqrt(squares / max(n, 1))
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    for b in blocks:
        features[b] -= mean
        features[b] /= scale
    return features


def typical_members(clusters: pd.DataFrame, n: int) -> dict[int, list[str]]:
    """The n ids closest to each cluster's centre (HDBSCAN's noise, cluster -1, has no centre and is left out)."""
    return {int(c): group.nsmallest(n, "distance")["id_str"].tolist() for c, group in clusters.groupby("cluster") if c >= 0}


def plot_montage(
    clusters: pd.DataFrame, image_paths: dict[str, str], path: Path | str, examples_per_cluster: int, view: Callable[[str], np.ndarray] = view_file
) -> None:
    """One row per cluster of its most typical galaxies (each read by `view`), saved as PNG."""
    from zoobot_core.figures import pyplot, save_figure

    plt = pyplot()
    members = typical_members(clusters, examples_per_cluster)
    sizes = clusters["cluster"].value_counts()
    fig, axes = plt.subplots(len(members), examples_per_cluster, figsize=(1.3 * examples_per_cluster, 1.4 * len(members)), squeeze=False)
    for row, (cluster, ids) in enumerate(sorted(members.items())):
        for col in range(examples_per_cluster):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(ids):
                ax.imshow(view(image_paths[ids[col]]))
            if col == 0:
                ax.set_ylabel(f"cluster {cluster}\n(n={sizes[cluster]})", fontsize=8)
    fig.suptitle("Most typical galaxies of each cluster (closest to its centre)", fontsize=10)
    save_figure(fig, path)


def cluster_files(
    representation_paths: list[str], ready_path: Path | str, clusters_path: Path | str, pca_path: Path | str, montage_path: Path | str, config: ClusterConfig,
    resize: ResizeConfig | None = None,
) -> pd.DataFrame:
    """The cluster rule: cluster every given split's representations; write the cluster table, the
    PCA-compressed representations (id_str, split, pca_*) and the montage (the catalog's images resized as `resize` says)."""
    from zoobot_core.io import atomic_write_table

    ids, splits, features = read_representations(representation_paths)
    clusters = cluster_features(ids, features, config)
    del features
    ready = pd.read_parquet(ready_path, columns=["id_str", "file_loc"])
    atomic_write_table(clusters, clusters_path)
    pca_cols = [c for c in clusters.columns if c.startswith("pca_")]
    atomic_write_table(clusters[["id_str", *pca_cols]].assign(split=splits)[["id_str", "split", *pca_cols]], pca_path)
    plot_montage(clusters, dict(zip(ready["id_str"], ready["file_loc"])), montage_path, config.examples_per_cluster, ImageViewer(resize or ResizeConfig()))
    return clusters

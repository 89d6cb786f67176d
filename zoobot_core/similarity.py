"""'Galaxies most like this one': nearest neighbours in the PCA-compressed representation space."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.images import ImageViewer, ResizeConfig, view_file
from zoobot_core.io import atomic_write_table

log = logging.getLogger(__name__)


def pca_columns(table: pd.DataFrame) -> list[str]:
    """The pca_* coordinate columns of a clusters (or PCA) table."""
    cols = [c for c in table.columns if c.startswith("pca_")]
    if not cols:
        raise ValueError("Table has no pca_* columns; pass clusters.parquet or representations/pca.parquet")
    return cols


def nearest_neighbours(table: pd.DataFrame, query_ids: Sequence[str], k: int = 8) -> pd.DataFrame:
    """For each query id, its k nearest other galaxies (Euclidean distance in PCA space).

    Returns one row per (query_id, rank) with the neighbour's id_str and distance, rank 1 nearest.
    """
    from sklearn.neighbors import NearestNeighbors

    unknown = [q for q in query_ids if q not in set(table["id_str"])]
    if unknown:
        raise KeyError(f"Query id(s) {unknown[:5]} are not among the {len(table)} clustered galaxies; check cluster.query_ids and cluster.splits")
    coords = table[pca_columns(table)].to_numpy(np.float64)
    k = min(k, len(table) - 1)
    index = NearestNeighbors(n_neighbors=k + 1).fit(coords)
    positions = pd.Index(table["id_str"]).get_indexer(list(query_ids))
    distances, neighbours = index.kneighbors(coords[positions])
    rows = []
    for query, query_pos, dist, idx in zip(query_ids, positions, distances, neighbours):
        keep = [(d, i) for d, i in zip(dist, idx) if i != query_pos][:k]  # the galaxy itself is not its own neighbour
        rows.extend({"query_id": query, "rank": rank, "id_str": table["id_str"].iloc[i], "distance": float(d)} for rank, (d, i) in enumerate(keep, 1))
    return pd.DataFrame(rows, columns=["query_id", "rank", "id_str", "distance"])


def plot_neighbours(neighbours: pd.DataFrame, image_paths: dict[str, str], path: Path | str, view: Callable[[str], np.ndarray] = view_file) -> None:
    """One row per query: the query galaxy, then its neighbours nearest first (each read by `view`)."""
    from zoobot_core.figures import pyplot, save_figure

    plt = pyplot()
    queries = list(dict.fromkeys(neighbours["query_id"]))
    k = int(neighbours["rank"].max()) if len(neighbours) else 0
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.35 * (k + 1), 1.5 * len(queries)), squeeze=False)
    for row, query in enumerate(queries):
        found = neighbours[neighbours["query_id"] == query].sort_values("rank")
        shown = [(query, "query"), *((r.id_str, f"#{r.rank}  d={r.distance:.1f}") for r in found.itertuples())]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([]), ax.set_yticks([])
            if col < len(shown):
                galaxy, label = shown[col]
                ax.imshow(view(image_paths[galaxy]))
                ax.set_title(label, fontsize=6)
                if col == 0:
                    ax.set_ylabel(query, fontsize=6)
                    for spine in ax.spines.values():
                        spine.set_edgecolor("#e67e22"), spine.set_linewidth(2)
    fig.suptitle("Galaxies most like each query (nearest in representation space)", fontsize=9)
    save_figure(fig, path)


def similar_files(
    clusters_path: Path | str, ready_path: Path | str, query_ids: Sequence[str], k: int, table_path: Path | str, plot_path: Path | str,
    resize: ResizeConfig | None = None,
) -> pd.DataFrame:
    """The similar rule: neighbours of the configured query galaxies, as a table and a montage (images resized as `resize` says)."""
    table = pd.read_parquet(clusters_path)
    neighbours = nearest_neighbours(table, query_ids, k)
    atomic_write_table(neighbours, table_path)
    ready = pd.read_parquet(ready_path, columns=["id_str", "file_loc"])
    plot_neighbours(neighbours, dict(zip(ready["id_str"], ready["file_loc"])), plot_path, ImageViewer(resize or ResizeConfig()))
    log.info("Nearest neighbours of %d query galaxies written to %s", len(query_ids), table_path)
    return neighbours

"""Clustering benchmark at Galaxy Zoo DECaLS scale: 300,000 x 1280 float32 representations.

Run: `make bench` (or `.venv/bin/python tests/benchmarks/bench_cluster.py`). The matrix is generated:
8 clusters in a 16-d latent space, projected to 1280-d, plus noise. *Ours* is
`cluster.cluster_representations` (StandardScaler, PCA with scikit-learn's automatic, here randomized,
SVD, KMeans); the *baseline* is the same with an exact (full) SVD. HDBSCAN is timed on a subsample.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def representations(n: int, dims: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """n galaxies' fake representations with 8 planted clusters, and the planted labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (8, 16))
    truth = rng.integers(0, 8, n)
    latent = centres[truth] + rng.normal(0, 1, (n, 16))
    features = (latent @ rng.normal(0, 1, (16, dims)) + rng.normal(0, 2, (n, dims))).astype(np.float32)
    table = pd.DataFrame(features, columns=[f"feat_{i:04d}" for i in range(dims)], copy=False)
    table.insert(0, "id_str", [f"g{i}" for i in range(n)])
    return table, truth


# peak resident memory of this process since it started (VmHWM resets at exec; ru_maxrss would count the parent's
# memory at fork)
_PEAK = "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024)"
# the cluster rule before 2026-11-28, as it was: each split's table read whole, a split column added, concatenated,
# a float32 matrix taken from it, StandardScaler and PCA each making a new one, then KMeans
_OLD_RULE = """
import sys
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
parts = [pd.read_parquet(p).assign(split=Path(p).stem) for p in sys.argv[1:]]
table = pd.concat(parts, ignore_index=True)
features = table[[c for c in table.columns if c.startswith("feat_")]].to_numpy(np.float32)
reduced = PCA(n_components=10, random_state=0).fit_transform(StandardScaler().fit_transform(features))
labels = KMeans(n_clusters=8, n_init=10, random_state=0).fit(reduced).labels_
""" + _PEAK
_NEW_RULE = """
from zoobot_core.cluster import ClusterConfig, cluster_features, read_representations
import sys
ids, splits, features = read_representations(sys.argv[1:])
clusters = cluster_features(ids, features, ClusterConfig(n_components=10, n_clusters=8, seed=0))
""" + _PEAK


def rule_memory(n: int, dims: int, workdir: str) -> tuple[float, float, float]:
    """Peak memory (MB) of the cluster rule's reading and clustering of n x dims representations in four split files
    (80/10/5/5%), the old way and ours, each in a fresh process; and the matrix's own size (MB)."""
    import subprocess
    import sys
    from pathlib import Path

    table, _ = representations(n, dims)
    paths, start = [], 0
    for split, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.05), ("unlabelled", 0.05)):
        stop = n if split == "unlabelled" else start + int(fraction * n)
        paths.append(str(Path(workdir) / f"{split}.parquet"))
        table.iloc[start:stop].to_parquet(paths[-1], index=False, row_group_size=4096)  # as the predict rule writes them
        start = stop
    del table
    peaks = [float(subprocess.run([sys.executable, "-c", code, *paths], check=True, capture_output=True, text=True).stdout.split()[-1])
             for code in (_OLD_RULE, _NEW_RULE)]
    return peaks[0], peaks[1], n * dims * 4 / 2**20


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--hdbscan-n", type=int, default=20_000)
    parser.add_argument("--memory-n", type=int, default=300_000, help="galaxies for the cluster rule's peak-memory comparison (0: skip)")
    args = parser.parse_args()
    if args.memory_n:
        import tempfile

        with tempfile.TemporaryDirectory() as workdir:
            old, new, matrix = rule_memory(args.memory_n, args.dims, workdir)
        print(f"The cluster rule's peak memory, reading {args.memory_n:,} x {args.dims} representations from four split files and "
              f"clustering them (the matrix alone: {matrix:,.0f} MB):\n")
        print("| | before: tables concatenated, standardized into a copy | ours: one matrix filled batch by batch, standardized in place | ratio |")
        print("|---|---|---|---|")
        print(f"| peak resident memory, MB | {old:,.0f} | {new:,.0f} | {old / new:.1f}x less |\n")

    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    from zoobot_core.cluster import ClusterConfig, cluster_representations

    table, truth = representations(args.n, args.dims)
    print(f"{args.n:,} x {args.dims} float32 ({table.iloc[:, 1:].to_numpy().nbytes / 2**30:.1f} GiB), 8 planted clusters; 2-core CPU, one run\n")
    config = ClusterConfig(n_components=10, n_clusters=8, seed=0)

    def baseline():
        features = table.iloc[:, 1:].to_numpy(np.float32)
        reduced = PCA(n_components=10, svd_solver="full").fit_transform(StandardScaler().fit_transform(features))
        return KMeans(n_clusters=8, n_init=10, random_state=0).fit(reduced).labels_

    ours_s, clusters = timed(lambda: cluster_representations(table, config))
    base_s, base_labels = timed(baseline)
    print("| step | baseline: exact SVD PCA + KMeans | ours: randomized PCA + KMeans | speed-up |")
    print("|---|---|---|---|")
    print(f"| PCA (10 components) + KMeans (8), seconds | {base_s:.1f} | {ours_s:.1f} | {base_s / ours_s:.1f}x |")
    print(f"| adjusted Rand index vs planted clusters | {adjusted_rand_score(truth, base_labels):.3f} | {adjusted_rand_score(truth, clusters['cluster']):.3f} | |")

    sub = clusters.sample(args.hdbscan_n, random_state=0)
    pcs = sub[[c for c in sub.columns if c.startswith("pca_")]].to_numpy()
    hdb_s, labels = timed(lambda: HDBSCAN(min_cluster_size=50, copy=True).fit(pcs).labels_)
    found = len(set(labels) - {-1})
    print(f"\nHDBSCAN (min_cluster_size 50) on {args.hdbscan_n:,} of them in the 10 PCA dimensions: {hdb_s:.1f} s, "
          f"{found} clusters, {np.mean(labels < 0):.1%} noise, adjusted Rand index {adjusted_rand_score(truth[sub.index], labels):.3f}")


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    main()

"""Which worker writes what. Every shard's galaxies are fixed before any image is read, by a hash of their ids: a
split's galaxies fall into a power-of-two number of buckets (about shard_size galaxies each) by their place in
[0, 1) (splits.hash_fraction with seed + 1, which also orders them), one shard per bucket, so adding or removing a
galaxy changes its own shard alone (the shard writer's cache then reuses the others: shard_cache). Shards are cut
into parts where whole shards would leave workers idle (parts_per_shard); the writer (shard_writer) runs the parts
and joins a cut shard's parts in order."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from zoobot_core.catalog import ID
from zoobot_core.shards import SPLITS, UNLABELLED, ShardSettings


@dataclass(frozen=True)
class Part:
    """One task for a worker: consecutive galaxies of one shard (all of them when the shard is one part). A shard's
    members are fixed before any image is read (its hash bucket: ShardGroup), so an unreadable image leaves its own
    shard one record short and moves no other galaxy."""

    shard: str  # <split>/<split>_NNNNN.tfrecord
    part: int
    n_parts: int
    ids: list[str]
    sources: list[str]
    labels: np.ndarray  # (galaxies, label columns)
    label_cols: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """The shard itself for a shard's first (or only) part, else a part file (not *.tfrecord) that the main
        process appends to the shard."""
        return self.shard if self.part == 0 else part_file(self.shard, self.part)


def part_file(shard: str, part: int) -> str:
    """Where a shard's later part (part >= 1) is written until the main process joins it: not a *.tfrecord name."""
    return f"{shard}.part{part:04d}"


MIN_PART = 64  # galaxies: a shard is cut into no parts smaller than this (each costs a task, a file and a join)
JOIN_COST = 0.25  # the main process's time to append and hash one galaxy of a shard in parts, in a worker's time
# per galaxy (measured ~0.2 at JPEG -> 224 px, where a galaxy's record is big and its decode cheap; less elsewhere)


def parts_per_shard(shard_sizes: list[int], workers: int) -> list[int]:
    """Into how many parts to cut each shard for `workers` processes, each taking the largest part left. Greedily,
    the shards of one size (and parts so far) are cut into twice their parts while that brings the estimated finish
    forward: the busiest
    worker's load (in galaxies) plus the main process's joining (JOIN_COST a galaxy of every shard in parts), which
    takes the workers' cores, and never less than the joining alone (one process does it). All 1 when whole shards
    share out evenly (each written by one worker, nothing to join); a few cut where they do not (with 4,096-galaxy
    shards, 3,000 galaxies make one 2,381-galaxy train shard; with 512, seven shards of which the last two or three
    are cut). A shard is cut into no parts under MIN_PART galaxies (part_bounds)."""
    counts = [1] * len(shard_sizes)
    if workers <= 1 or not shard_sizes:
        return counts
    finish = estimated_finish(shard_sizes, counts, workers)
    while True:
        trials = []  # shards of the same size and parts are alike: each such group is cut together
        for group in sorted(set(zip(shard_sizes, counts))):
            size, count = group
            if size // (2 * count) >= MIN_PART:
                trial = [2 * c if (s, c) == group else c for s, c in zip(shard_sizes, counts)]
                trials.append((estimated_finish(shard_sizes, trial, workers), trial))
        if not trials:
            return counts
        best, trial = min(trials, key=lambda t: t[0])
        if best >= finish:
            return counts
        finish, counts = best, trial


def estimated_finish(shard_sizes: list[int], counts: list[int], workers: int) -> float:
    """When the last of `workers` processes would finish, in galaxies, with each shard cut into `counts` parts:
    largest part first to the least-loaded worker, plus the main process's joining (parts_per_shard)."""
    loads = [0] * workers  # a heap
    cuts = [part_bounds(size, count) for size, count in zip(shard_sizes, counts)]
    for part in sorted((b - a for shard in cuts for a, b in shard), reverse=True):
        heapq.heapreplace(loads, loads[0] + part)
    joined = JOIN_COST * sum(size for size, shard in zip(shard_sizes, cuts) if len(shard) > 1)
    return max(max(loads) + joined / workers, joined)


def part_bounds(length: int, n: int) -> list[tuple[int, int]]:
    """[start, stop) of a shard's parts: n nearly equal consecutive ranges of its `length` galaxies, fewer where
    that would make parts under MIN_PART (one part for a shard under 2 * MIN_PART)."""
    count = max(1, min(n, length // MIN_PART))
    bounds = np.linspace(0, length, count + 1).round().astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


@dataclass(frozen=True)
class ShardGroup:
    """One shard's galaxies, in record order: their ids, source files and labels."""

    shard: str  # <split>/<split>_NNNNN.tfrecord, NNNNN its bucket
    ids: list[str]
    sources: list[str]
    labels: np.ndarray  # (galaxies, label columns)
    label_cols: tuple[str, ...]


def shard_count(n: int, shard_size: int) -> int:
    """How many shards (buckets) a split of n galaxies gets: the power of two nearest n / shard_size on a log scale,
    at least 1, so shards hold 0.7-1.4 x shard_size galaxies on average and the count changes only when the split
    crosses shard_size x 2^(k + 1/2) galaxies."""
    return 1 if n <= shard_size else 2 ** round(math.log2(n / shard_size))


def shard_groups(df: pd.DataFrame, settings: ShardSettings, source_col: str) -> list[ShardGroup]:
    """Every shard's galaxies: each split's rows (sorted by `_order`, their hash_fraction with seed + 1) in
    shard_count buckets of [0, 1), one shard per bucket that holds any galaxy; in shard order."""
    groups = []
    for split in (*SPLITS, UNLABELLED):
        rows = df[df["split"] == split]
        label_cols = tuple(settings.label_cols) if split != UNLABELLED else ()
        labels = rows[list(label_cols)].to_numpy(dtype=np.float64) if label_cols else np.empty((len(rows), 0))
        ids, sources = rows[ID].astype(str).to_numpy(), rows[source_col].astype(str).to_numpy()
        n_buckets = shard_count(len(rows), settings.shard_size)
        buckets = np.minimum((rows["_order"].to_numpy() * n_buckets).astype(np.int64), n_buckets - 1)
        for bucket in np.unique(buckets):
            members = buckets == bucket
            groups.append(ShardGroup(f"{split}/{split}_{bucket:05d}.tfrecord", ids[members].tolist(), sources[members].tolist(), labels[members], label_cols))
    return groups


def plan_parts(groups: list[ShardGroup], workers: int) -> list[Part]:
    """Each shard's galaxies cut into the parts parts_per_shard gives it, in shard order."""
    counts = parts_per_shard([len(g.ids) for g in groups], workers)
    parts = []
    for g, n in zip(groups, counts):
        cuts = part_bounds(len(g.ids), n)
        parts += [Part(g.shard, k, len(cuts), g.ids[a:b], g.sources[a:b], g.labels[a:b], g.label_cols) for k, (a, b) in enumerate(cuts)]
    return parts

"""BALD acquisition at Galaxy Zoo DECaLS scale, and the Monte Carlo approximation's error against exact values.

Run: `make bench` (or `.venv/bin/python tests/benchmarks/bench_acquisition.py`). The concentrations are
generated to look like MC-dropout samples of the model (each question's mean vote fractions and
precision per galaxy, then 5 samples scattered by exp(0.15 x normal), inside the head's (1, 101)).

1. Speed: `acquisition.bald_scores` over the whole DECaLS tree (exact for the 7 questions with at most
   three answers, Monte Carlo for bulge-size, merging and spiral-arm-count) against the *baseline*, the
   textbook loop (per galaxy and question, every vote outcome's Dirichlet-Multinomial probability under
   each sample, then H[mean] - mean H), timed on a few galaxies for the three-answer questions alone and
   scaled up (it cannot do the six-answer question at all: 1.2 million outcomes per sample).
2. Accuracy: Monte Carlo against the exact sum for 3- to 6-answer questions at 40 volunteers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import spearmanr

from zoobot_core.acquisition import AcquireConfig, acquire_files, bald_scores, mutual_information, n_outcomes, vote_outcomes
from zoobot_core.dirichlet import log_pmf
from zoobot_core.predict import sample_table
from zoobot_core.schemas import get_tree


def dropout_like(n: int, answers_per_question: list[int], samples: int, seed: int = 0) -> np.ndarray:
    """(n, samples, answers) concentrations that look like the model's MC-dropout samples."""
    rng = np.random.default_rng(seed)
    blocks = []
    for k in answers_per_question:
        base = rng.dirichlet(np.full(k, 0.7), n) * rng.uniform(3, 80, (n, 1))
        blocks.append(base[:, None, :] * np.exp(0.15 * rng.standard_normal((n, samples, k))))
    return np.clip(np.concatenate(blocks, axis=-1), 1.0, 101.0)


def textbook(alpha: np.ndarray, n: int) -> np.ndarray:
    """The baseline: per galaxy, every outcome's probability under each sample, then H[mean] - mean H."""
    outcomes = vote_outcomes(n, alpha.shape[-1])
    out = []
    for galaxy in alpha:
        p = np.exp(np.stack([log_pmf(outcomes, s) for s in galaxy]))
        pbar = p.mean(axis=0)
        out.append(-(pbar * np.log(pbar)).sum() + (p * np.log(p)).sum(axis=1).mean())
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--galaxies", type=int, default=300_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--volunteers", type=int, default=40)
    parser.add_argument("--accuracy-galaxies", type=int, default=200)
    args = parser.parse_args()
    tree = get_tree("gz_decals_dr5")
    ks = [len(q.answers) for q in tree.questions]
    alpha = dropout_like(args.galaxies, ks, args.samples)
    ids = [f"g{i}" for i in range(args.galaxies)]
    config = AcquireConfig(n_volunteers=args.volunteers)
    start = time.perf_counter()
    bald_scores(ids, alpha, tree, config)
    ours = time.perf_counter() - start
    small = [(first, last) for first, last in tree.question_index_groups if last - first + 1 <= 3]
    start = time.perf_counter()
    for first, last in small:
        mutual_information(alpha[:, :, first : last + 1], args.volunteers)
    ours_small = time.perf_counter() - start
    few = alpha[:20]
    start = time.perf_counter()
    for first, last in small:
        textbook(few[:, :, first : last + 1], args.volunteers)
    per_galaxy = (time.perf_counter() - start) / len(few)
    print(f"## BALD over the DECaLS tree: {args.galaxies:,} galaxies x {args.samples} samples, {args.volunteers} volunteers\n")
    print("| method | questions | galaxies/s | time for all |")
    print("|---|---|---|---|")
    print(f"| textbook loop (timed on {len(few)} galaxies) | the {len(small)} with <= 3 answers | {1 / per_galaxy:,.0f} | {per_galaxy * args.galaxies / 60:,.1f} min (extrapolated) |")
    print(f"| ours, exact | the {len(small)} with <= 3 answers | {args.galaxies / ours_small:,.0f} | {ours_small / 60:.2f} min |")
    print(f"| ours, exact <= {config.exact_max_outcomes} outcomes, else Monte Carlo ({config.mc_draws} draws) | all {len(ks)} | "
          f"{args.galaxies / ours:,.0f} | {ours / 60:.2f} min |")
    print(f"\nsame work (questions with <= 3 answers): ours {per_galaxy * args.galaxies / ours_small:.1f}x faster than the textbook loop\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Image.new("RGB", (64, 64), (90, 80, 70)).save(folder / "galaxy.png")
        sample_table(ids, alpha.astype(np.float32), tree.label_cols).to_parquet(folder / "samples.parquet")
        pd.DataFrame({"id_str": ids, "file_loc": str(folder / "galaxy.png"), "resized_loc": str(folder / "galaxy.png")}).to_parquet(folder / "ready.parquet")
        start = time.perf_counter()
        acquire_files(folder / "samples.parquet", folder / "ready.parquet", folder / "ranked.parquet", folder / "top.csv", folder / "montage.png", tree, config)
        rule = time.perf_counter() - start
    print(f"the acquire rule's work end to end (read {args.galaxies * args.samples:,} sample rows, score, rank, write Parquet, CSV and montage): {rule / 60:.2f} min\n")

    print(f"## Monte Carlo against exact, {args.volunteers} volunteers, {args.samples} samples\n")
    print("| answers | outcomes | galaxies | exact s/galaxy | draws | mean relative error | Spearman rank correlation |")
    print("|---|---|---|---|---|---|---|")
    for k in (3, 4, 5, 6):
        g = args.accuracy_galaxies if k < 6 else max(2, args.accuracy_galaxies // 10)
        a = dropout_like(g, [k], args.samples, seed=k)
        start = time.perf_counter()
        exact = mutual_information(a, args.volunteers, exact_max_outcomes=10**9)
        exact_time = (time.perf_counter() - start) / g
        for draws in (64, 128, 256):
            estimate = mutual_information(a, args.volunteers, exact_max_outcomes=0, draws=draws, rng=np.random.default_rng(draws))
            error = np.abs(estimate - exact).mean() / exact.mean()
            rho = spearmanr(estimate, exact)[0] if g > 2 else float("nan")
            print(f"| {k} | {n_outcomes(args.volunteers, k):,} | {g} | {exact_time:.4f} | {draws} | {100 * error:.1f}% | {rho:.3f} |")


if __name__ == "__main__":
    main()

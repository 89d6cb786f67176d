"""BALD mutual information: exact against brute force, Monte Carlo against exact, and the acquire rule's outputs."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_core.acquisition import (
    AcquireConfig,
    acquire_files,
    bald_scores,
    mutual_information,
    n_outcomes,
    rank,
    reach_fractions,
    vote_outcomes,
)
from zoobot_core.dirichlet import log_pmf
from zoobot_core.predict import sample_table
from zoobot_core.schemas import get_tree

TREE = get_tree("gz_decals_dr5")


def _brute_force(alpha: np.ndarray, n: int) -> np.ndarray:
    """H[mean_s p_s] - mean_s H[p_s], p_s over every vote outcome, one galaxy at a time."""
    outcomes = vote_outcomes(n, alpha.shape[-1])
    result = []
    for galaxy in alpha:
        p = np.exp(np.stack([log_pmf(outcomes, sample) for sample in galaxy]))
        assert np.allclose(p.sum(axis=1), 1)

        def entropy(q):
            return -(q * np.log(np.where(q > 0, q, 1))).sum(axis=-1)

        result.append(entropy(p.mean(axis=0)) - entropy(p).mean())
    return np.asarray(result)


def _samples_near(base: np.ndarray, spread: float, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Dropout-like samples: each concentration scaled by exp(spread x normal noise)."""
    return base[:, None, :] * np.exp(spread * rng.standard_normal((base.shape[0], n_samples, base.shape[1])))


def test_vote_outcomes_are_every_split_once():
    outcomes = vote_outcomes(7, 3)
    assert len(outcomes) == n_outcomes(7, 3) == 36
    assert (outcomes.sum(axis=1) == 7).all() and (outcomes >= 0).all()
    assert len({tuple(o) for o in outcomes}) == len(outcomes)
    assert n_outcomes(40, 6) == 1_221_759  # spiral-arm-count at 40 volunteers: why Monte Carlo


@pytest.mark.parametrize("k, n", [(2, 40), (3, 12), (4, 8), (6, 4)])
def test_exact_matches_brute_force(k, n):
    rng = np.random.default_rng(k)
    alpha = rng.uniform(0.5, 30, (5, 4, k))
    np.testing.assert_allclose(mutual_information(alpha, n, exact_max_outcomes=10**6), _brute_force(alpha, n), rtol=1e-9, atol=1e-12)


def test_information_is_never_negative_and_zero_when_samples_agree():
    rng = np.random.default_rng(0)
    alpha = rng.uniform(1, 50, (50, 5, 3))
    textbook = _brute_force(alpha[:, :, :3], 12)  # H[mean] - mean H, no clipping anywhere
    assert (textbook > 0).all()
    np.testing.assert_allclose(mutual_information(alpha, 12, 10**6), textbook, rtol=1e-9)
    for exact_max in (10**6, 0):  # exact, Monte Carlo
        assert (mutual_information(alpha, 40, exact_max, 32, np.random.default_rng(1)) >= 0).all()
        same = np.repeat(alpha[:, :1], 5, axis=1)
        np.testing.assert_array_equal(mutual_information(same, 40, exact_max, 32, np.random.default_rng(1)), 0.0)
    assert (mutual_information(alpha[:, :1], 40) == 0).all()  # one sample: nothing to disagree about


def test_information_grows_as_samples_disagree():
    rng = np.random.default_rng(3)
    base = rng.uniform(2, 40, (20, 3))
    noise = rng.standard_normal((20, 5, 3))
    spreads = (0.05, 0.2, 0.5, 1.0)
    mi = np.stack([mutual_information(base[:, None, :] * np.exp(s * noise), 40) for s in spreads])
    assert (np.diff(mi, axis=0) > 0).all()


def test_monte_carlo_agrees_with_exact():
    rng = np.random.default_rng(5)
    alpha = _samples_near(rng.uniform(1, 20, (30, 4)), 0.4, 5, rng)
    exact = mutual_information(alpha, 15, exact_max_outcomes=10**6)
    estimate = mutual_information(alpha, 15, exact_max_outcomes=0, draws=3000, rng=np.random.default_rng(6))
    assert np.abs(estimate - exact).mean() / exact.mean() < 0.03
    assert np.corrcoef(estimate, exact)[0, 1] > 0.99


def test_reach_follows_the_tree():
    fractions = np.full((1, len(TREE.label_cols)), 0.5)
    col = {c: i for i, c in enumerate(TREE.label_cols)}
    fractions[0, col["smooth-or-featured_featured-or-disk"]] = 0.6
    fractions[0, col["disk-edge-on_no"]] = 0.7
    fractions[0, col["has-spiral-arms_yes"]] = 0.8
    reach = dict(zip(TREE.question_names, reach_fractions(fractions, TREE)[0]))
    assert reach["smooth-or-featured"] == reach["merging"] == 1.0
    assert reach["disk-edge-on"] == pytest.approx(0.6)
    assert reach["bar"] == pytest.approx(0.6 * 0.7)
    assert reach["spiral-arm-count"] == pytest.approx(0.6 * 0.7 * 0.8)


def test_total_is_the_reach_weighted_sum_and_ranking_is_by_it():
    rng = np.random.default_rng(7)
    alpha = _samples_near(rng.uniform(1, 30, (40, len(TREE.label_cols))), 0.3, 5, rng)
    scores = bald_scores([f"g{i}" for i in range(40)], alpha, TREE, AcquireConfig(mc_draws=16))
    per_question = scores[[f"{q}_mi" for q in TREE.question_names]].to_numpy()
    reach = scores[[f"{q}_reach" for q in TREE.question_names]].to_numpy()
    np.testing.assert_allclose(scores["mutual_information"], (per_question * reach).sum(axis=1))
    ranked = rank(scores)
    assert ranked["rank"].tolist() == list(range(1, 41))
    assert ranked["mutual_information"].is_monotonic_decreasing
    again = bald_scores([f"g{i}" for i in range(40)], alpha, TREE, AcquireConfig(mc_draws=16))
    pd.testing.assert_frame_equal(scores, again)  # seeded: same numbers every run


def test_acquire_files_writes_ranking_upload_list_and_montage(tmp_path):
    rng = np.random.default_rng(8)
    ids = [f"G{i:03d}" for i in range(30)]
    spread = np.linspace(0.01, 0.8, 30)[:, None, None]  # the last galaxies' samples disagree most
    alpha = rng.uniform(2, 30, (30, 1, len(TREE.label_cols))) * np.exp(spread * rng.standard_normal((30, 5, len(TREE.label_cols))))
    sample_table(ids, alpha.astype(np.float32), TREE.label_cols).to_parquet(tmp_path / "samples.parquet")
    for k, i in enumerate(ids):
        Image.new("RGB", (40, 40), (8 * k, 80, 80)).save(tmp_path / f"original_{i}.png")
    ready = pd.DataFrame({"id_str": ids, "file_loc": [str(tmp_path / f"original_{i}.png") for i in ids]})
    ready.to_parquet(tmp_path / "ready.parquet")
    out = tmp_path / "out"
    ranked = acquire_files(tmp_path / "samples.parquet", tmp_path / "ready.parquet", out / "ranked.parquet", out / "top.csv", out / "montage.png",
                           TREE, AcquireConfig(top_n=10, montage=6))
    top = pd.read_csv(out / "top.csv")
    assert list(top.columns) == ["rank", "id_str", "file_loc", "mutual_information"] and len(top) == 10
    assert top["file_loc"].tolist() == [str(tmp_path / f"original_{i}.png") for i in top["id_str"]]
    assert set(ranked["id_str"]) == set(ids) and pd.read_parquet(out / "ranked.parquet")["id_str"].tolist() == ranked["id_str"].tolist()
    assert np.mean([int(i[1:]) for i in top["id_str"]]) > 17  # mostly the galaxies with the most disagreeing samples
    assert (out / "montage.png").stat().st_size > 0
    sample_table([], np.zeros((0, 5, len(TREE.label_cols)), np.float32), TREE.label_cols).to_parquet(tmp_path / "none.parquet")
    empty = acquire_files(tmp_path / "none.parquet", tmp_path / "ready.parquet", out / "e.parquet", out / "e.csv", out / "e.png", TREE, AcquireConfig())
    assert empty.empty and len(pd.read_csv(out / "e.csv")) == 0 and (out / "e.png").exists()  # no unlabelled galaxies: empty outputs, no crash
    ready.iloc[1:].to_parquet(tmp_path / "ready.parquet")
    with pytest.raises(ValueError, match="not in"):
        acquire_files(tmp_path / "samples.parquet", tmp_path / "ready.parquet", out / "r.parquet", out / "t.csv", out / "m.png", TREE, AcquireConfig())


def test_bench_acquisition_runs_at_a_tiny_size(tmp_path):
    """The 300k benchmark (make bench) on 2,000 galaxies, so it cannot rot. It asserts the table, not a speed: a timing
    depends on what else the machine runs (the figures are the benchmark's, in docs/benchmarks.md)."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, str(REPO / "tests/benchmarks/bench_acquisition.py"), "--galaxies", "2000", "--accuracy-galaxies", "4"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Monte Carlo against exact" in result.stdout
    whole_tree = re.search(r"\| all 10 \| ([\d,]+) \|", result.stdout)
    assert whole_tree and int(whole_tree.group(1).replace(",", "")) > 0, result.stdout


def test_streamed_scores_from_the_samples_file_equal_the_whole_table(tmp_path, monkeypatch):
    """acquire reads the samples Parquet a few thousand galaxies at a time (dirichlet.iter_samples): whole galaxies per
    read however the file's record batches fall, and exactly the whole table's scores, Monte Carlo draws included
    (seeded per BATCH galaxies of the whole table)."""
    import zoobot_core.acquisition as acquisition
    from zoobot_core.dirichlet import iter_samples, samples_array

    rng = np.random.default_rng(3)
    ids = [f"g{i:03d}" for i in range(90)]
    alpha = _samples_near(rng.uniform(1, 30, (90, len(TREE.label_cols))), 0.4, 3, rng)
    table = pd.DataFrame(alpha.reshape(-1, alpha.shape[-1]), columns=TREE.label_cols)
    table.insert(0, "id_str", np.repeat(ids, 3))
    table.to_parquet(tmp_path / "samples.parquet", row_group_size=7)  # record batches split galaxies
    for galaxies, rows in ((1, 5), (7, 4), (40, 65536), (1000, 2)):
        got = list(iter_samples(tmp_path / "samples.parquet", TREE.label_cols, galaxies, rows))
        assert all(len(batch_ids) == galaxies for batch_ids, _ in got[:-1])
        assert sum((i for i, _ in got), []) == ids
        np.testing.assert_array_equal(np.concatenate([a for _, a in got]), alpha)
    config = AcquireConfig(mc_draws=8, exact_max_outcomes=10)  # Monte Carlo for the larger questions
    monkeypatch.setattr(acquisition, "BATCH", 16)
    monkeypatch.setattr(acquisition, "STREAM_BATCHES", 2)  # 32 galaxies a read: 3 reads, the last ragged
    whole = bald_scores(*samples_array(table, TREE.label_cols), TREE, config)
    streamed, n_samples = acquisition.streamed_bald_scores(tmp_path / "samples.parquet", TREE, config)
    assert n_samples == 3
    pd.testing.assert_frame_equal(streamed, whole)


@pytest.mark.parametrize("stream_batches", [1, 8])
def test_streamed_scores_refuse_a_split_galaxy_or_uneven_sample_counts(tmp_path, monkeypatch, stream_batches):
    """A galaxy's id again later in the samples file (in another read, or the same one), or galaxies with different numbers
    of samples: a ValueError naming the file and galaxy (not a MergeError in acquire, nor a ranking that counts it twice)."""
    import zoobot_core.acquisition as acquisition

    rng = np.random.default_rng(4)
    ids = [f"g{i:02d}" for i in range(12)]
    table = sample_table(ids, _samples_near(rng.uniform(1, 30, (12, len(TREE.label_cols))), 0.3, 3, rng).astype(np.float32), TREE.label_cols)
    monkeypatch.setattr(acquisition, "BATCH", 2)
    monkeypatch.setattr(acquisition, "STREAM_BATCHES", stream_batches)
    table.iloc[[*range(30), 6, 7, 8, *range(30, 36)]].to_parquet(tmp_path / "split.parquet", row_group_size=5)  # g02 again after g09
    with pytest.raises(ValueError, match=r"split\.parquet: the rows of galaxy 'g02' are not together.*rerun predict"):
        acquisition.streamed_bald_scores(tmp_path / "split.parquet", TREE, AcquireConfig(mc_draws=4))
    table.iloc[[*range(15), 14, *range(15, 36)]].to_parquet(tmp_path / "uneven.parquet", row_group_size=5)  # g04 has 4 rows
    with pytest.raises(ValueError, match=r"uneven\.parquet: galaxy 'g04' has 4 sample rows, but the first galaxy \('g00'\) has 3"):
        acquisition.streamed_bald_scores(tmp_path / "uneven.parquet", TREE, AcquireConfig(mc_draws=4))


def test_galaxies_with_many_samples_are_read_fewer_at_a_time_with_the_same_scores(tmp_path, monkeypatch):
    """Memory flat in samples (dropout samples x views): a read holds at most STREAM_BATCHES x BATCH x 5 sample rows, in
    whole BATCHes (so the draws, seeded per BATCH of the whole table, are the same), and the scores are the whole table's."""
    import zoobot_core.acquisition as acquisition
    from zoobot_core.dirichlet import samples_array

    rng = np.random.default_rng(5)
    ids = [f"g{i:03d}" for i in range(100)]
    alpha = _samples_near(rng.uniform(1, 30, (100, len(TREE.label_cols))), 0.4, 12, rng)  # 12 samples a galaxy
    table = pd.DataFrame(alpha.reshape(-1, alpha.shape[-1]), columns=TREE.label_cols)
    table.insert(0, "id_str", np.repeat(ids, 12))
    table.to_parquet(tmp_path / "samples.parquet", row_group_size=50)
    config = AcquireConfig(mc_draws=8, exact_max_outcomes=10)
    monkeypatch.setattr(acquisition, "BATCH", 16)
    monkeypatch.setattr(acquisition, "STREAM_BATCHES", 4)  # 64 galaxies, or 320 rows: 26 galaxies, so one BATCH (16) a read
    reads = []
    original = acquisition.bald_scores
    monkeypatch.setattr(acquisition, "bald_scores", lambda ids, *a, **k: reads.append(len(ids)) or original(ids, *a, **k))
    streamed, n_samples = acquisition.streamed_bald_scores(tmp_path / "samples.parquet", TREE, config)
    assert n_samples == 12 and reads == [16] * 6 + [4]
    pd.testing.assert_frame_equal(streamed, original(*samples_array(table, TREE.label_cols), TREE, config))


def test_monte_carlo_in_galaxy_blocks_gives_the_numbers_of_one_block(monkeypatch):
    """_monte_carlo draws every vote first, then scores the galaxies in blocks of bounded size (memory flat in
    samples): any block size gives exactly the same numbers."""
    import zoobot_core.acquisition as acquisition

    rng = np.random.default_rng(2)
    alpha = rng.uniform(1, 40, (37, 9, 6))
    whole = acquisition._monte_carlo(alpha, 40, 64, np.random.default_rng(7))
    monkeypatch.setattr(acquisition, "_EXACT_ELEMENTS", 9 * 64 * 5)  # 5 galaxies a block
    np.testing.assert_array_equal(acquisition._monte_carlo(alpha, 40, 64, np.random.default_rng(7)), whole)

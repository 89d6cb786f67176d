"""The samples file read a batch at a time: iter_samples checks the whole file, and the calibration rule streamed
(any read size) gives exactly the whole table's numbers, in far less memory."""

import json
import math
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import zoobot_core.calibration as calibration
import zoobot_core.dirichlet as dirichlet
from zoobot_core.calibration import CalibrationConfig, calibrate, calibration_files, streamed_calibration
from zoobot_core.dirichlet import iter_samples, samples_array
from zoobot_core.predict import sample_table
from zoobot_core.recalibration import METADATA_KEY, invert_recalibration
from zoobot_core.schemas import DecisionTree, Question

TREE = DecisionTree("made-up", (Question("shape", ("round", "flat", "odd")), Question("arms", ("yes", "no"), ("shape", "flat"))))
RECALIBRATION = {
    "method": "scale_power", "answers": list(TREE.label_cols),
    "questions": {"shape": {"log_scale": 0.4, "scale": math.exp(0.4), "power": 0.8, "status": "fitted"},
                  "arms": {"log_scale": -0.3, "scale": math.exp(-0.3), "power": 1.0, "status": "fitted"}},
}


def _ids(n: int) -> list[str]:
    return [f"g{i:03d}" for i in range(n)]


def _table(ids: list[str], rows_per_galaxy: list[int], seed: int = 0) -> pd.DataFrame:
    """A samples table: galaxy i's rows_per_galaxy[i] rows, galaxies in order."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.uniform(0.5, 30, (sum(rows_per_galaxy), len(TREE.label_cols))).astype(np.float32), columns=TREE.label_cols)
    table.insert(0, "id_str", np.repeat(np.asarray(ids, dtype=object), rows_per_galaxy))
    return table


def _split_file(tmp_path, n: int = 12, samples: int = 3):
    """Galaxies g000.. with `samples` rows each, except that g003's id appears twice: its own rows, and again as a later block."""
    ids = _ids(n)
    table = _table(ids, [samples] * n)
    twin = table[table["id_str"] == "g003"]
    table = pd.concat([table.iloc[: 9 * samples], twin, table.iloc[9 * samples :]], ignore_index=True)  # g003 again after g008
    path = tmp_path / "split.parquet"
    table.to_parquet(path, row_group_size=4)
    return path


@pytest.mark.parametrize(("galaxies", "rows"), [(1, 65536), (2, 4), (100, 65536), (100, 2), (3, 1)])
def test_iter_samples_refuses_a_galaxy_whose_rows_are_in_two_places(tmp_path, galaxies, rows):
    path = _split_file(tmp_path)
    with pytest.raises(ValueError, match=r"split\.parquet.*'g003'.*not together.*rerun predict"):
        list(iter_samples(path, TREE.label_cols, galaxies, rows))
    _catalogs(tmp_path / "shards", _ids(12))
    with pytest.raises(ValueError, match=r"'g003'.*not together.*rerun predict"):  # the calibration rule meets it too
        streamed_calibration(path, tmp_path / "shards", TREE, CalibrationConfig(), galaxies_per_read=galaxies, rows_per_read=rows)


def test_a_split_galaxy_right_across_a_record_batch_boundary_is_refused(tmp_path):
    table = _table(_ids(6), [4] * 6)
    table = pd.concat([table.iloc[:8], table.iloc[:4], table.iloc[8:]], ignore_index=True)  # g000 g001 | g000 g002 ...
    table.to_parquet(tmp_path / "s.parquet")
    for rows in (8, 6, 3):  # the second g000 starts a read, straddles one, ends one
        with pytest.raises(ValueError, match=r"'g000'.*not together"):
            list(iter_samples(tmp_path / "s.parquet", TREE.label_cols, 1, rows))


@pytest.mark.parametrize(("galaxies", "rows"), [(2, 65536), (100, 65536), (1, 5)])
def test_iter_samples_refuses_galaxies_with_different_numbers_of_samples(tmp_path, galaxies, rows):
    _table(_ids(10), [3] * 5 + [4] * 5).to_parquet(tmp_path / "uneven.parquet")
    with pytest.raises(ValueError, match=r"uneven\.parquet: galaxy 'g005' has 4 sample rows, but the first galaxy \('g000'\) has 3.*rerun predict"):
        list(iter_samples(tmp_path / "uneven.parquet", TREE.label_cols, galaxies, rows))


def test_a_hash_collision_is_rechecked_not_reported(tmp_path, monkeypatch):
    """Every id hashed alike: a good file still reads whole and equal, a split one is still refused by name."""
    table = _table(_ids(20), [3] * 20)
    table.to_parquet(tmp_path / "good.parquet", row_group_size=5)
    expected = list(iter_samples(tmp_path / "good.parquet", TREE.label_cols, 3, 4))
    monkeypatch.setattr(dirichlet, "_id_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    got = list(iter_samples(tmp_path / "good.parquet", TREE.label_cols, 3, 4))
    assert [i for i, _ in got] == [i for i, _ in expected] and sum((i for i, _ in got), []) == _ids(20)
    np.testing.assert_array_equal(np.concatenate([a for _, a in got]), np.concatenate([a for _, a in expected]))
    with pytest.raises(ValueError, match=r"'g003'.*not together"):
        list(iter_samples(_split_file(tmp_path), TREE.label_cols, 2, 4))


def test_seen_ids_stay_found_across_merges():
    """The compact id memory: hashes found after any number of merges of its sorted runs, none invented, and the
    runs stay few (O(log n): a lookup is a binary search in each), however small the batches."""
    seen, rng = dirichlet._SeenIds(), np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 500).astype(np.uint64)
    for chunk in np.array_split(hashes[:400], 57):
        assert not seen.met(chunk).any()
        seen.add(chunk)
    assert seen.met(hashes[:400]).all() and not seen.met(hashes[400:]).any()
    many = dirichlet._SeenIds()
    for chunk in np.array_split(rng.integers(0, 2**63, 100_000).astype(np.uint64), 3000):  # ~33 galaxies a read
        many.add(chunk)
    assert len(many._runs) <= 18 and sum(map(len, many._runs)) == 100_000  # log2(100,000) = 16.6


def _catalogs(shards, ids: list[str], seed: int = 1) -> pd.DataFrame:
    """Test and train catalogs with votes for `ids` (test in another order than the samples); returns the votes."""
    rng = np.random.default_rng(seed)
    shape = np.stack([rng.multinomial(n, p) for n, p in zip(rng.integers(0, 25, len(ids)), rng.dirichlet([2, 2, 2], len(ids)))])
    arms = np.stack([rng.multinomial(n, p) for n, p in zip(shape[:, 1], rng.dirichlet([2, 2], len(ids)))])
    votes = pd.DataFrame(np.concatenate([shape, arms], axis=1).astype(float), columns=TREE.label_cols).assign(id_str=ids)
    shards.mkdir(exist_ok=True)
    votes.sample(frac=1, random_state=0).to_parquet(shards / "test_catalog.parquet")
    votes.assign(id_str=[f"t{i}" for i in range(len(ids))]).to_parquet(shards / "train_catalog.parquet")
    return votes


def _whole_table(samples_path, shards, recalibration: dict | None, config: CalibrationConfig):
    """The calibration before streaming: the whole samples table in memory, then calibrate."""
    ids, alpha = samples_array(pd.read_parquet(samples_path), TREE.label_cols)
    test = pd.read_parquet(shards / "test_catalog.parquet").set_index("id_str")
    train = pd.read_parquet(shards / "train_catalog.parquet", columns=TREE.label_cols).to_numpy(np.float64)
    raw = invert_recalibration(alpha, recalibration, TREE) if recalibration is not None else None
    return calibrate(alpha, test.loc[ids, TREE.label_cols].to_numpy(np.float64), train, TREE, config, raw_alpha=raw)


def _write_samples(path, n: int, views: int, dropout: int, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(1, 20, (n, 1, len(TREE.label_cols))) * np.exp(0.3 * rng.standard_normal((n, views * dropout, len(TREE.label_cols))))
    sample_table(_ids(n), alpha.astype(np.float32), TREE.label_cols, n_views=views).to_parquet(path, row_group_size=13)


@pytest.mark.parametrize("recalibrated", [False, True], ids=["raw", "recalibrated"])
@pytest.mark.parametrize(("views", "dropout"), [(1, 5), (4, 3)])
def test_streamed_calibration_equals_the_whole_table(tmp_path, monkeypatch, views, dropout, recalibrated):
    """Tables, curve, PIT and headline identical for 1, 7 and more-than-the-file galaxies a read, with record batches that
    cut galaxies; blocks of 16 galaxies, so reads straddle them."""
    monkeypatch.setattr(calibration, "BLOCK", 16)
    n, config = 75, CalibrationConfig(levels=(0.5, 0.8, 0.95), min_votes=2)
    _write_samples(tmp_path / "samples.parquet", n, views, dropout)
    _catalogs(tmp_path / "shards", _ids(n))
    recalibration_path = None
    if recalibrated:
        recalibration_path = tmp_path / "recalibration.json"
        recalibration_path.write_text(json.dumps(RECALIBRATION))
    whole = _whole_table(tmp_path / "samples.parquet", tmp_path / "shards", RECALIBRATION if recalibrated else None, config)
    assert set(whole[0].filter(like="raw_").columns) != set() if recalibrated else "raw" not in whole[2]["nll_per_galaxy"]
    assert whole[2]["n_samples"] == views * dropout and whole[0]["n_galaxies"].tolist()[0] > 0
    for galaxies, rows in ((1, 65536), (7, 4), (7, 65536), (1000, 5), (1000, views * dropout * n)):
        *streamed, undone = streamed_calibration(tmp_path / "samples.parquet", tmp_path / "shards", TREE, config, recalibration_path,
                                                 galaxies_per_read=galaxies, rows_per_read=rows)
        assert undone == (RECALIBRATION if recalibrated else None)
        for got, expected in zip([streamed[0], streamed[1], streamed[3]], [whole[0], whole[1], whole[3]]):
            pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, atol=1e-12)
        assert json.dumps(streamed[2], sort_keys=True) == json.dumps(whole[2], sort_keys=True)
    if recalibrated:  # as predict writes them: the map recorded in the samples' metadata, no recalibration.json needed
        table = pa.Table.from_pandas(pd.read_parquet(tmp_path / "samples.parquet"), preserve_index=False)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(RECALIBRATION)}), tmp_path / "recorded.parquet",
                       row_group_size=13)
        recorded = streamed_calibration(tmp_path / "recorded.parquet", tmp_path / "shards", TREE, config, galaxies_per_read=7, rows_per_read=4)
        assert json.dumps(recorded[2], sort_keys=True) == json.dumps(whole[2], sort_keys=True)
        pd.testing.assert_frame_equal(recorded[3], whole[3], rtol=1e-12, atol=1e-12)
    out = tmp_path / "out"
    headline = calibration_files(tmp_path / "samples.parquet", tmp_path / "shards", TREE, out / "c.csv", out / "curve.csv", out / "c.json",
                                 out / "c.png", config, recalibration_path, out / "pit.csv", out / "pit.png", galaxies_per_read=7)
    assert {k: v for k, v in headline.items() if k not in ("posterior", "recalibration")} == whole[2]
    assert ("recalibration" in headline) == recalibrated
    pd.testing.assert_frame_equal(pd.read_csv(out / "c.csv", float_precision="round_trip"), whole[0], rtol=1e-12, atol=1e-12)
    pd.testing.assert_frame_equal(pd.read_csv(out / "pit.csv", float_precision="round_trip"), whole[3], rtol=1e-12, atol=1e-12)


def test_pit_draws_do_not_depend_on_how_the_galaxies_are_fed(monkeypatch):
    """The in-memory API fed whole or in uneven pieces through the accumulator: the same PIT and bootstrap intervals."""
    monkeypatch.setattr(calibration, "BLOCK", 8)
    rng = np.random.default_rng(5)
    n = 50
    alpha = rng.uniform(1, 20, (n, 4, 5))
    votes = np.concatenate([rng.multinomial(12, [0.3, 0.5, 0.2], n), rng.multinomial(6, [0.5, 0.5], n)], axis=1).astype(float)
    config = CalibrationConfig()
    whole = calibrate(alpha, votes, votes, TREE, config)
    accumulator = calibration.CalibrationAccumulator(TREE, config, votes, n)
    for start, stop in ((0, 3), (3, 3), (3, 20), (20, 21), (21, 50)):
        accumulator.add(alpha[start:stop], votes[start:stop])
    pieces = accumulator.result()
    pd.testing.assert_frame_equal(pieces[3], whole[3], check_exact=True)
    pd.testing.assert_frame_equal(pieces[0], whole[0], check_exact=True)
    assert pieces[2] == whole[2]
    assert whole[3].groupby(["question", "predictor"])["fraction"].sum().round(12).eq(1).all()


def test_bootstrap_chunks_give_the_numbers_of_one_draw():
    """The coverage and NLL intervals' resamples drawn a budget at a time: the same numbers as the one (resamples, n) draw."""
    rng = np.random.default_rng(0)
    numerator, denominator = rng.integers(0, 4, 301).astype(float), np.full(301, 3.0)
    index = np.random.default_rng(0).integers(0, 301, (1000, 301))
    ratios = numerator[index].sum(axis=1) / denominator[index].sum(axis=1)
    textbook = tuple(float(x) for x in np.percentile(ratios, [2.5, 97.5]))
    for budget in (1, 301 * 7 + 5, 1 << 20):
        assert calibration._bootstrap(numerator, denominator, budget=budget) == textbook
        assert calibration._bootstrap(numerator, 3.0, budget=budget) == textbook


def test_streamed_calibration_memory_is_far_below_the_whole_table(tmp_path, monkeypatch):
    """Peak Python/NumPy memory (tracemalloc) of the calibration rule on 40 samples x 2,400 galaxies: the whole table's
    path against the streamed one (64 galaxies a read, record batches as long; the per-block scratch shrunk alike for both,
    so that the samples' share shows: at this size about 21 MB against 2 MB)."""
    monkeypatch.setattr(calibration, "BLOCK", 64)
    monkeypatch.setattr(calibration, "_BATCH_ELEMENTS", 20_000)
    monkeypatch.setattr(calibration, "_RESAMPLE_BUDGET", 1 << 14)
    n = 2400
    _write_samples(tmp_path / "samples.parquet", n, 8, 5)
    _catalogs(tmp_path / "shards", _ids(n))
    (tmp_path / "recalibration.json").write_text(json.dumps(RECALIBRATION))
    config = CalibrationConfig()

    def peak(run) -> tuple[int, object]:
        tracemalloc.start()
        try:
            result = run()
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    whole_peak, whole = peak(lambda: _whole_table(tmp_path / "samples.parquet", tmp_path / "shards", RECALIBRATION, config))
    streamed_peak, streamed = peak(lambda: streamed_calibration(tmp_path / "samples.parquet", tmp_path / "shards", TREE, config,
                                                                tmp_path / "recalibration.json", galaxies_per_read=64, rows_per_read=64 * 40))
    assert json.dumps(streamed[2], sort_keys=True) == json.dumps(whole[2], sort_keys=True)
    assert streamed_peak < whole_peak / 4, (streamed_peak, whole_peak)


def test_an_empty_test_split_writes_empty_outputs(tmp_path):
    sample_table([], np.zeros((0, 6, len(TREE.label_cols)), np.float32), TREE.label_cols).to_parquet(tmp_path / "samples.parquet")
    _catalogs(tmp_path / "shards", _ids(30))
    pd.read_parquet(tmp_path / "shards" / "test_catalog.parquet").iloc[:0].to_parquet(tmp_path / "shards" / "test_catalog.parquet")
    out = tmp_path / "out"
    headline = calibration_files(tmp_path / "samples.parquet", tmp_path / "shards", TREE, out / "c.csv", out / "curve.csv", out / "c.json",
                                 out / "c.png", CalibrationConfig(), pit_path=out / "pit.csv", pit_figure_path=out / "pit.png")
    assert headline["n_test"] == 0 and headline["nll_per_galaxy"] is None
    assert pd.read_csv(out / "c.csv")["n_galaxies"].tolist() == [0, 0] and (out / "pit.png").exists()


def test_iter_samples_max_rows_reads_fewer_galaxies_where_they_have_more_samples(tmp_path):
    """max_rows bounds a read's rows (whole galaxies, a multiple of `multiple`, at least `multiple`): memory flat in
    the samples per galaxy; the galaxies and values are the whole file's, in order."""
    table = _table(_ids(30), [6] * 30)
    table.to_parquet(tmp_path / "s.parquet", row_group_size=7)
    whole_ids, whole = samples_array(table, list(TREE.label_cols))
    for max_rows, multiple, per_read in ((40, 2, 6), (40, 4, 4), (5, 3, 3), (10_000, 1, 8)):
        got = list(iter_samples(tmp_path / "s.parquet", list(TREE.label_cols), 8, rows_per_read=9, max_rows=max_rows, multiple=multiple))
        assert [len(i) for i, _ in got[:-1]] == [per_read] * (len(got) - 1)
        assert sum((i for i, _ in got), []) == list(whole_ids)
        np.testing.assert_array_equal(np.concatenate([a for _, a in got]), whole)

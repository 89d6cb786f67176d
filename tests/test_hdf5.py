"""The predictions_hdf5 rule's conversion, streamed a few galaxies at a time: the same file as from the whole table."""

import h5py
import numpy as np
import pytest

from zoobot_core.hdf5 import load_predictions_hdf5, samples_file_to_hdf5, samples_to_array, write_predictions_hdf5
from zoobot_core.predict import sample_table

LABELS = ["q_a", "q_b", "r_a", "r_b", "r_c"]


@pytest.mark.parametrize("per_read", [1, 7, 4096])
def test_streamed_conversion_equals_the_whole_table(tmp_path, per_read):
    rng = np.random.default_rng(0)
    ids = [f"g{i:03d}" for i in range(50)]
    samples = rng.uniform(0.5, 40, (50, 2 * 3, len(LABELS))).astype(np.float32)  # 2 views x 3 dropout samples
    table = sample_table(ids, samples, LABELS, n_views=2)
    table.to_parquet(tmp_path / "samples.parquet", row_group_size=11)
    samples_file_to_hdf5(tmp_path / "samples.parquet", LABELS, tmp_path / "streamed.hdf5", {"tta_views": 2}, galaxies_per_read=per_read)
    values, whole_ids = samples_to_array(table, LABELS)
    write_predictions_hdf5(values, whole_ids, LABELS, tmp_path / "whole.hdf5", {"tta_views": 2})
    streamed, whole = load_predictions_hdf5(tmp_path / "streamed.hdf5"), load_predictions_hdf5(tmp_path / "whole.hdf5")
    np.testing.assert_array_equal(streamed[0], whole[0])
    assert streamed[1:] == whole[1:] and streamed[1] == ids
    with h5py.File(tmp_path / "streamed.hdf5") as a, h5py.File(tmp_path / "whole.hdf5") as b:
        assert dict(a.attrs) == dict(b.attrs) and a["predictions"].compression == "gzip"


@pytest.mark.parametrize("per_read", [1, 4096])
def test_a_galaxy_whose_rows_are_apart_is_refused(tmp_path, per_read):
    ids = ["a", "b"]
    table = sample_table(ids, np.ones((2, 2, len(LABELS)), np.float32), LABELS)
    table.iloc[[0, 2, 1, 3]].to_parquet(tmp_path / "samples.parquet")  # a, b, a, b
    with pytest.raises(ValueError, match=r"samples\.parquet: the rows of galaxy 'a' are not together.*rerun predict"):
        samples_file_to_hdf5(tmp_path / "samples.parquet", LABELS, tmp_path / "out.hdf5", galaxies_per_read=per_read)
    assert not (tmp_path / "out.hdf5").exists()


@pytest.mark.parametrize("per_read", [1, 3, 4096])
def test_a_galaxy_split_across_reads_or_with_other_sample_counts_is_refused(tmp_path, per_read):
    """The id of a galaxy again after other galaxies (record batches cut through both), or galaxies with 3 and 4 samples:
    refused by name, no file written."""
    table = sample_table([f"g{i}" for i in range(8)], np.ones((8, 3, len(LABELS)), np.float32), LABELS)
    table.iloc[[*range(18), 3, 4, 5, *range(18, 24)]].to_parquet(tmp_path / "split.parquet", row_group_size=4)  # g1 again after g5
    with pytest.raises(ValueError, match=r"split\.parquet: the rows of galaxy 'g1' are not together.*rerun predict"):
        samples_file_to_hdf5(tmp_path / "split.parquet", LABELS, tmp_path / "out.hdf5", galaxies_per_read=per_read)
    table.iloc[[*range(12), 11, *range(12, 24)]].to_parquet(tmp_path / "uneven.parquet", row_group_size=4)  # g3 has 4 rows
    with pytest.raises(ValueError, match=r"uneven\.parquet: galaxy 'g3' has 4 sample rows, but the first galaxy \('g0'\) has 3.*rerun predict"):
        samples_file_to_hdf5(tmp_path / "uneven.parquet", LABELS, tmp_path / "out.hdf5", galaxies_per_read=per_read)
    assert not (tmp_path / "out.hdf5").exists()

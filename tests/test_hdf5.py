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


def test_a_galaxy_whose_rows_are_apart_is_refused(tmp_path):
    ids = ["a", "b"]
    table = sample_table(ids, np.ones((2, 2, len(LABELS)), np.float32), LABELS)
    table.iloc[[0, 2, 1, 3]].to_parquet(tmp_path / "samples.parquet")  # a, b, a, b
    with pytest.raises(ValueError, match="rerun"):
        samples_file_to_hdf5(tmp_path / "samples.parquet", LABELS, tmp_path / "out.hdf5", galaxies_per_read=1)
    assert not (tmp_path / "out.hdf5").exists()

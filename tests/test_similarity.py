import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_core.similarity import nearest_neighbours, plot_neighbours


def _table():
    # two tight groups in PCA space: a* near the origin, b* near (10, 10)
    coords = np.array([[0, 0], [0.1, 0], [0, 0.3], [10, 10], [10.2, 10], [10, 10.5]])
    table = pd.DataFrame(coords, columns=["pca_00", "pca_01"])
    table.insert(0, "id_str", ["a0", "a1", "a2", "b0", "b1", "b2"])
    return table


def test_neighbours_are_nearest_first_and_exclude_the_query():
    found = nearest_neighbours(_table(), ["a0", "b0"], k=2)
    assert found[found["query_id"] == "a0"]["id_str"].tolist() == ["a1", "a2"]
    assert found[found["query_id"] == "b0"]["id_str"].tolist() == ["b1", "b2"]
    assert found.loc[0, "distance"] == pytest.approx(0.1) and (found["rank"].tolist() == [1, 2, 1, 2])


def test_unknown_query_ids_are_named():
    with pytest.raises(KeyError, match="nobody"):
        nearest_neighbours(_table(), ["a0", "nobody"])


def test_neighbour_montage(tmp_path):
    paths = {}
    for i in _table()["id_str"]:
        paths[i] = str(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), (40, 80, 120)).save(paths[i])
    plot_neighbours(nearest_neighbours(_table(), ["a0", "b2"], k=3), paths, tmp_path / "n.png")
    with Image.open(tmp_path / "n.png") as img:
        assert img.size[0] > 300

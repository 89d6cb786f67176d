"""Predictions as HDF5 in Zoobot's layout, for users whose tools read Zoobot's own prediction files.

One file per split: `predictions` (galaxies, answers, samples) float32 Dirichlet concentrations,
`id_str` and `label_cols` as UTF-8 strings; attributes say how the samples were drawn.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.io import atomic_path, streamed_parquet

log = logging.getLogger(__name__)


def samples_to_array(samples: pd.DataFrame, label_cols: list[str]) -> tuple[np.ndarray, list[str]]:
    """(galaxies, answers, samples) concentrations and the galaxy ids, from predict's samples table (galaxy order kept)."""
    missing = [c for c in ("id_str", "sample", *label_cols) if c not in samples.columns]
    if missing:
        raise ValueError(f"Samples table lacks columns {missing[:5]}; it must come from the predict rule of the same model")
    ids = list(pd.unique(samples["id_str"]))
    per_galaxy = samples.groupby("id_str", sort=False).size()
    if per_galaxy.nunique() > 1:
        raise ValueError(f"Galaxies have different numbers of samples ({sorted(per_galaxy.unique())}); rerun the predict rule")
    n_samples = int(per_galaxy.iloc[0]) if len(per_galaxy) else 0
    if not _grouped_in_order(samples, ids, n_samples):  # the predict rule writes them grouped: no sort of millions of rows
        samples = samples.assign(_galaxy=pd.Categorical(samples["id_str"], categories=ids)).sort_values(["_galaxy", "sample"], kind="stable")
    values = samples[label_cols].to_numpy(np.float32).reshape(len(ids), n_samples, len(label_cols))
    return values.transpose(0, 2, 1), ids


def _grouped_in_order(samples: pd.DataFrame, ids: list[str], n_samples: int) -> bool:
    """Whether each galaxy's rows are together, galaxies in `ids` order, samples 0.. in order within each."""
    if len(samples) != len(ids) * n_samples:
        return False
    galaxy = samples["id_str"].to_numpy().reshape(len(ids), n_samples)
    sample = samples["sample"].to_numpy().reshape(len(ids), n_samples)
    return bool((galaxy == np.asarray(ids, dtype=object)[:, None]).all() and (sample == np.arange(n_samples)).all())


def write_predictions_hdf5(
    concentrations: np.ndarray, id_str: list[str], label_cols: list[str], path: Path | str, attrs: dict | None = None
) -> None:
    """Write (galaxies, answers, samples) concentrations with their ids and answer names, gzip-compressed, atomically."""
    import h5py

    concentrations = np.asarray(concentrations, dtype=np.float32)
    if concentrations.ndim != 3 or concentrations.shape[:2] != (len(id_str), len(label_cols)):
        raise ValueError(f"concentrations must be (galaxies={len(id_str)}, answers={len(label_cols)}, samples), got {concentrations.shape}")
    strings = h5py.string_dtype(encoding="utf-8")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("predictions", data=concentrations, compression="gzip", chunks=True if concentrations.size else None)
            f.create_dataset("id_str", data=np.asarray(id_str, dtype=object), dtype=strings)
            f.create_dataset("label_cols", data=np.asarray(label_cols, dtype=object), dtype=strings)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
    log.info("Wrote %d galaxies x %d answers x %d samples to %s", *concentrations.shape, path)


def load_predictions_hdf5(path: Path | str) -> tuple[np.ndarray, list[str], list[str]]:
    """(concentrations (galaxies, answers, samples), id_str, label_cols) from a file written by write_predictions_hdf5."""
    import h5py

    with h5py.File(path, "r") as f:
        return (
            f["predictions"][...],
            [s.decode() for s in f["id_str"][...]],
            [s.decode() for s in f["label_cols"][...]],
        )


def samples_file_to_hdf5(samples_path: Path | str, label_cols: list[str], hdf5_path: Path | str, attrs: dict | None = None,
                         galaxies_per_read: int = 4096) -> None:
    """The predictions_hdf5 rule: convert one split's samples Parquet into Zoobot's HDF5 layout (with the recalibration
    the samples carry, as JSON in the `recalibration` attribute: "null" for the raw network's), read and written
    `galaxies_per_read` galaxies at a time (dirichlet.iter_samples, which checks the whole file: the same number of samples
    for every galaxy, each galaxy's rows together): memory flat in the number of galaxies and views."""
    import json

    import h5py

    from zoobot_core.dirichlet import READ_SAMPLES, iter_samples
    from zoobot_core.recalibration import applied_recalibration

    recorded, recalibration = applied_recalibration(samples_path)
    attrs = {**(attrs or {}), **({"recalibration": json.dumps(recalibration)} if recorded else {})}
    with streamed_parquet(samples_path) as file:
        n_rows = file.metadata.num_rows
        missing = [c for c in ("id_str", "sample", *label_cols) if c not in file.schema_arrow.names]
    if missing:
        raise ValueError(f"Samples table lacks columns {missing[:5]}; it must come from the predict rule of the same model")
    reads = iter_samples(samples_path, label_cols, galaxies_per_read, max_rows=galaxies_per_read * READ_SAMPLES)  # fewer galaxies where they have more samples
    first = next(reads, None)
    if first is None:  # no galaxy: today's empty layout
        write_predictions_hdf5(np.zeros((0, len(label_cols), 0), np.float32), [], label_cols, hdf5_path, attrs)
        return
    n_samples = first[1].shape[1]
    n_galaxies = n_rows // n_samples
    strings = h5py.string_dtype(encoding="utf-8")
    with atomic_path(hdf5_path) as tmp, h5py.File(tmp, "w") as f:
        # chunks of one read's galaxies: each read writes whole chunks (h5py's own chunk shape cut across reads, and
        # every read recompressed the chunks it shared with the next: 3x the whole table's time at 40 samples)
        chunk = (max(1, min(len(first[0]), n_galaxies)), len(label_cols), n_samples)
        predictions = f.create_dataset("predictions", shape=(n_galaxies, len(label_cols), n_samples), dtype=np.float32, compression="gzip", chunks=chunk)
        id_str = f.create_dataset("id_str", shape=(n_galaxies,), dtype=strings)
        start = 0
        for ids, alpha in itertools.chain([first], reads):  # iter_samples refuses unequal sample counts and a galaxy's rows apart
            predictions[start : start + len(ids)] = alpha.astype(np.float32).transpose(0, 2, 1)
            id_str[start : start + len(ids)] = ids
            start += len(ids)
        if start != n_galaxies:
            raise ValueError(f"{samples_path}: {n_rows} rows are not {n_samples} samples for each of {start} galaxies; rerun the predict rule")
        f.create_dataset("label_cols", data=np.asarray(label_cols, dtype=object), dtype=strings)
        for key, value in attrs.items():
            f.attrs[key] = value
    log.info("Wrote %d galaxies x %d answers x %d samples to %s", n_galaxies, len(label_cols), n_samples, hdf5_path)


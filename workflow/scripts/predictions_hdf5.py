"""Rule predictions_hdf5: one split's prediction samples in Zoobot's HDF5 layout."""

from zoobot_core.hdf5 import samples_file_to_hdf5
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
samples_file_to_hdf5(
    snakemake.input.samples,
    list(snakemake.params.label_cols),
    snakemake.output.hdf5,
    attrs={"dropout_samples_per_view": snakemake.params.n_samples, "tta_views": snakemake.params.tta_views},
)

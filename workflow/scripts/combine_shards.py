"""Rule combine_shards: the main catalog's shard chunks checked and written together (manifest, per-split catalogs,
unreadable images, shards.json), what training and prediction read."""

from zoobot_core.chunk_shards import combine_chunk_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
combine_chunk_files(
    snakemake.input.validated,
    snakemake.input.quarantine,
    list(snakemake.input.chunks),
    # from the config, not a param: a new limit changes no shard, so it must not retrain (gather_images checks it again)
    snakemake.config["catalog"]["max_quarantine_fraction"],
    label_cols=tuple(snakemake.params.label_cols),
)

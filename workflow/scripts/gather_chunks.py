"""Rules gather_images and gather_finetune_images: a catalog's shard chunks joined: ready catalog (each galaxy's
split, shard and record), full quarantine table, row accounting, and the chunks' shard files together."""

from zoobot_core.chunk_shards import gather_chunk_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
gather_chunk_files(
    snakemake.input.validated,
    snakemake.input.quarantine,
    list(snakemake.input.chunks),
    snakemake.output.ready,
    snakemake.output.quarantine,
    snakemake.output.accounting,
    snakemake.params.max_quarantine_fraction,
    label_cols=tuple(snakemake.params.label_cols),
    rule=snakemake.params.chunk_rule,
    shard_files=snakemake.params.get("shard_files", True),
)

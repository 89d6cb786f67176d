"""Rule gather_finetune_images: a finetuning catalog's shard chunks joined: ready catalog (each galaxy's shard and
record), full quarantine table, row accounting."""

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
)

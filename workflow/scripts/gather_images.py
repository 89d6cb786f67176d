"""Rule gather_images: ready catalog, full quarantine table, row accounting."""

from zoobot_core.chunk_shards import gather_shards_file
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
gather_shards_file(
    snakemake.input.validated,
    snakemake.input.quarantine,
    snakemake.input.shards,
    snakemake.output.ready,
    snakemake.output.quarantine,
    snakemake.output.accounting,
    snakemake.params.max_quarantine_fraction,
)

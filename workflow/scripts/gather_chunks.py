"""Rules gather_finetune_images: a finetuning catalog's resized chunks joined: ready catalog, full quarantine table, row accounting."""

from zoobot_core.images import gather_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
gather_files(
    snakemake.input.validated,
    snakemake.input.quarantine,
    list(snakemake.input.chunks),
    snakemake.output.ready,
    snakemake.output.quarantine,
    snakemake.output.accounting,
    snakemake.params.max_quarantine_fraction,
)

"""Rule resize_finetune_images: resize one chunk of galaxies."""

from zoobot_core.images import ResizeConfig, resize_chunk_file
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
settings = dict(snakemake.params.items())
rows_digest = settings.pop("rows")  # the chunk's galaxies as planned: its rerun trigger
resize_chunk_file(
    snakemake.input.validated, int(snakemake.wildcards.chunk), snakemake.output[0], ResizeConfig(**settings), workers=snakemake.threads, rows_digest=rows_digest
)

"""Rule resize_images: resize one chunk of galaxies."""

from zoobot_core.images import ResizeConfig, resize_chunk_file
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
resize_chunk_file(
    snakemake.input.validated, int(snakemake.wildcards.chunk), snakemake.output[0], ResizeConfig(**snakemake.params), workers=snakemake.threads
)

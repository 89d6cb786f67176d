"""Rule resize_finetune_images: resize one chunk of galaxies."""

from zoobot_core.images import ResizeConfig, resize_chunk_file
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
settings = dict(snakemake.params.items())
del settings["rows"]  # the digest of the chunk's galaxies: only its rerun trigger (the chunk records its own)
resize_chunk_file(snakemake.input.validated, int(snakemake.wildcards.chunk), snakemake.output[0], ResizeConfig(**settings), workers=snakemake.threads)

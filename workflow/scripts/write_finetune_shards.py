"""Rule write_finetune_shards: one chunk of a finetuning catalog, its images resized straight into shards."""

from zoobot_core.chunk_shards import write_chunk_shards_file
from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging
from zoobot_core.shards import ShardSettings

setup_logging(snakemake.log[0])
p = snakemake.params
write_chunk_shards_file(
    snakemake.input.validated,
    int(snakemake.wildcards.chunk),
    snakemake.output[0],
    ShardSettings(size=p.size, shard_size=p.shard_size, seed=p.seed, image_encoding=p.image_encoding),
    ResizeConfig(**p.resize),
    workers=snakemake.threads,
    # from the config, not a param: it changes no shard (as the main chain's write_shards)
    hash_images=snakemake.config["provenance"]["hash_images"],
)

"""Rules write_shards and write_finetune_shards: one chunk of a validated catalog, its images resized straight into shards."""

from zoobot_core.chunk_shards import write_chunk_shards_file
from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging
from zoobot_core.shards import ShardSettings

setup_logging(snakemake.log[0])
params = {k: v for k, v in snakemake.params.items() if k != "rows"}  # rows: the rerun trigger only
resize = ResizeConfig(**params.pop("resize"))
settings = ShardSettings(**{k: tuple(v) if k == "label_cols" else v for k, v in params.items()})
main_catalog = "quarantine" in snakemake.input.keys()  # the main chain checks validation's quarantine first
write_chunk_shards_file(
    snakemake.input.validated,
    int(snakemake.wildcards.chunk),
    snakemake.output[0],
    settings,
    resize,
    workers=snakemake.threads,
    # from the config, not a param: it changes no shard, and the provenance rule hashes the images itself when the
    # manifest lacks them (turned on later), so toggling it must not resize the catalog again
    hash_images=snakemake.config["provenance"]["hash_images"],
    validation_quarantine_path=snakemake.input.get("quarantine"),
    # from the config, not a param: the limit changes no shard, so changing it must not rewrite them
    max_quarantine_fraction=snakemake.config["catalog"]["max_quarantine_fraction"] if main_catalog else None,
)

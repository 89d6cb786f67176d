"""Rule write_shards: the validated catalog's images resized straight into deterministic TFRecord shards."""

from zoobot_core.chunk_shards import survey_shards_file
from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging
from zoobot_core.shards import ShardSettings

setup_logging(snakemake.log[0])
params = dict(snakemake.params)
params["label_cols"] = tuple(params["label_cols"])
resize = ResizeConfig(**params.pop("resize"))
survey_shards_file(
    snakemake.input.validated,
    snakemake.input.quarantine,
    snakemake.output[0],
    ShardSettings(**params),
    resize,
    # from the config, not a param: the limit changes no shard, so changing it must not rewrite them
    max_quarantine_fraction=snakemake.config["catalog"]["max_quarantine_fraction"],
    workers=snakemake.threads,
    # from the config, not a param: it changes no shard, and the provenance rule hashes the images itself when the
    # manifest lacks them (turned on later), so toggling it must not resize the survey again
    hash_images=snakemake.config["provenance"]["hash_images"],
)

"""Rule write_shards: deterministic TFRecord shards of the ready catalog, one process per thread."""

from zoobot_core.io import setup_logging
from zoobot_core.shards import ShardSettings, write_shards_file

setup_logging(snakemake.log[0])
params = dict(snakemake.params)
params["label_cols"] = tuple(params["label_cols"])
write_shards_file(snakemake.input.ready, snakemake.output[0], ShardSettings(**params), workers=snakemake.threads)

"""Rule encode: one split's representations from the configured Zoobot 2 encoder (no training)."""

from zoobot_core.hardware import cap_onednn_isa

# before anything starts TensorFlow in this job: oneDNN reads its instruction-set cap once, at start-up
cap_onednn_isa(snakemake.config["onednn_max_isa"])

from pathlib import Path

from zoobot_core.encode import encode_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
# the Snakefile fetched the files before any job ran (the cache or a folder): the job reads the input files, no network
encode_files(
    # the catalog's shards.json is beside its shard chunks
    Path(snakemake.input.encoder_config).parent, Path(snakemake.input.shards).parent, snakemake.wildcards.split,
    snakemake.output.representations, batch_size=snakemake.params.batch_size, source=snakemake.params.encoder,
)

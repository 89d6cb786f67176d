"""Rule provenance: resolved config, package versions, commit, seeds, input and shard checksums."""

from pathlib import Path

from zoobot_core.io import setup_logging
from zoobot_core.provenance import write_provenance

setup_logging(snakemake.log[0])
write_provenance(
    dict(snakemake.params.config),
    snakemake.input.catalog,
    snakemake.input.validated,
    Path(snakemake.input.shards).parent,  # shards.json beside the shard chunks
    snakemake.output.provenance,
    snakemake.output.images,
    snakemake.params.repo,
    hash_images=snakemake.params.hash_images,
    workers=snakemake.threads,
    model_config_path=snakemake.input.get("model_config"),
)

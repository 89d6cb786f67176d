"""Rule predict: MC-dropout predictions and representations of one split."""

from zoobot_core.hardware import cap_onednn_isa

# before anything starts TensorFlow in this job: oneDNN reads its instruction-set cap once, at start-up
cap_onednn_isa(snakemake.config["onednn_max_isa"])

from pathlib import Path

from zoobot_core.io import setup_logging
from zoobot_core.predict import PredictConfig, predict_files

setup_logging(snakemake.log[0])
predict_files(
    Path(snakemake.input.model).parent,
    Path(snakemake.input.shards).parent,  # shards.json beside the shard chunks
    snakemake.wildcards.split,
    snakemake.output.predictions,
    snakemake.output.representations,
    PredictConfig(**snakemake.params),
    samples_path=snakemake.output.samples,
)

"""Rule recalibrate: fit each question's map of the predicted concentrations on the validation split."""

from zoobot_core.hardware import cap_onednn_isa

# before anything starts TensorFlow in this job: oneDNN reads its instruction-set cap once, at start-up
cap_onednn_isa(snakemake.config["onednn_max_isa"])

from pathlib import Path

from zoobot_core.io import setup_logging
from zoobot_core.predict import PredictConfig
from zoobot_core.recalibration import RecalibrationConfig, recalibrate_files

setup_logging(snakemake.log[0])
params = snakemake.params
recalibrate_files(
    Path(snakemake.input.model).parent,
    Path(snakemake.input.shards).parent,  # shards.json beside the shard chunks
    snakemake.output[0],
    PredictConfig(**params.predict),
    RecalibrationConfig(method=params.method, min_galaxies=params.min_galaxies, min_votes=params.min_votes, folds=params.folds, seed=params.seed),
)

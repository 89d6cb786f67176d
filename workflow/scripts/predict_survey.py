"""Rule predict_survey: the finetuned model over every galaxy of the survey catalog's shard chunks, streamed and
resumable."""

from zoobot_core.hardware import cap_onednn_isa

# before anything starts TensorFlow in this job: oneDNN reads its instruction-set cap once, at start-up
cap_onednn_isa(snakemake.config["onednn_max_isa"])

from pathlib import Path

from zoobot_core.finetuned import predict_survey_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
predict_survey_files(
    Path(snakemake.input.model).parent, list(snakemake.input.chunks), snakemake.output.predictions,
    snakemake.output.get("hdf5"), batch_size=snakemake.params.batch_size, seed=snakemake.params.seed, threads=snakemake.threads,
)

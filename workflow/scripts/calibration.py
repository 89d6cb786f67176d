"""Rule calibration: coverage of the predicted vote-count intervals and held-out likelihood, test split."""

from zoobot_core.calibration import CalibrationConfig, calibration_files
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree

setup_logging(snakemake.log[0])
calibration_files(
    snakemake.input.samples,
    snakemake.input.shards,
    get_tree(snakemake.params.tree, snakemake.params.question_suffix),
    snakemake.output.table,
    snakemake.output.curve,
    snakemake.output.headline,
    snakemake.output.figure,
    CalibrationConfig(levels=tuple(snakemake.params.levels), min_votes=snakemake.params.min_votes),
)

"""Rule calibration: coverage of the predicted vote-count intervals, held-out likelihood and PIT, test split."""

from pathlib import Path

from zoobot_core.calibration import CalibrationConfig, calibration_files
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
calibration_files(
    i.samples,
    Path(i.shards).parent,
    get_tree(snakemake.params.tree, snakemake.params.question_suffix),
    o.table,
    o.curve,
    o.headline,
    o.figure,
    CalibrationConfig(levels=tuple(snakemake.params.levels), min_votes=snakemake.params.min_votes),
    recalibration_path=i.get("recalibration"),
    pit_path=o.pit,
    pit_figure_path=o.pit_figure,
)

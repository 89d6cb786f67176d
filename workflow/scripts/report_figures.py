"""Rule report_figures: the PNG figures of the run's HTML report."""

from pathlib import Path

from zoobot_core.figures import report_figures
from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree

setup_logging(snakemake.log[0])
i = snakemake.input
report_figures(
    i.accounting, i.quarantine, i.ready, i.history, i.per_question, i.confident, i.confusion, i.predictions, Path(i.shards).parent,
    get_tree(snakemake.params.tree, snakemake.params.question_suffix),
    dict(snakemake.output.items()),
    ResizeConfig(**snakemake.params.view),
)

"""Rule finetune_figures: ROC curves, the surest calls and the reliability diagram of the cross-validation, for the report."""

from pathlib import Path

from zoobot_core.figures import finetune_figures
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
finetune_figures(i.cv_predictions, i.metrics, i.ready, Path(i.chunks[0]).parent, o.scores, o.roc, o.examples, o.reliability)

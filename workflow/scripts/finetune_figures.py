"""Rule finetune_figures: ROC curves, the surest calls and the reliability diagram of the cross-validation, for the report."""

from pathlib import Path

from zoobot_core.figures import finetune_figures
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
# the labelled catalog's chunk folders are in labelled/shards beside the cross-validation's outputs
finetune_figures(i.cv_predictions, i.metrics, i.ready, Path(i.metrics).parent / "labelled/shards", o.scores, o.roc, o.examples, o.reliability)

"""Rule evaluate: test-set metrics vs a constant predictor."""

from pathlib import Path

from zoobot_core.evaluate import evaluate_files
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree

setup_logging(snakemake.log[0])
evaluate_files(
    snakemake.input.predictions,
    Path(snakemake.input.shards).parent,  # shards.json beside the shard chunks
    get_tree(snakemake.params.tree, snakemake.params.question_suffix),
    snakemake.output.metrics,
    snakemake.output.per_question,
    snakemake.output.confident,
    snakemake.output.confusion,
    confident_fraction=snakemake.params.confident_fraction,
    min_votes=snakemake.params.min_votes,
)

"""Rule train_model: train on the shards, keep the best epoch."""

from zoobot_core.hardware import cap_onednn_isa

# before anything starts TensorFlow in this job: oneDNN reads its instruction-set cap once, at start-up
cap_onednn_isa(snakemake.config["onednn_max_isa"])

from pathlib import Path

from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree
from zoobot_core.train import TrainConfig, train_from_shards

setup_logging(snakemake.log[0])
settings = {k: v for k, v in snakemake.params.train.items() if k != "threads"}
# not a param, so switching TensorBoard logs on or off does not retrain
settings["tensorboard"] = snakemake.config["train"]["tensorboard"]
train_from_shards(
    Path(snakemake.input.shards).parent,  # shards.json beside the shard chunks
    Path(snakemake.output.model).parent,
    get_tree(snakemake.params.tree, snakemake.params.question_suffix),
    TrainConfig(seed=snakemake.params.seed, **settings),
    state_dir=snakemake.params.state_dir,
    # the configured count, not the cores Snakemake granted: the same config then trains the same bits on any machine
    threads=snakemake.params.train["threads"],
)

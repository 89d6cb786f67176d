"""Rule finetune_model: cross-validated finetuning of the configured base, and the final model."""

from zoobot_core.hardware import cap_onednn_isa

# before anything starts TensorFlow in this job: oneDNN reads its instruction-set cap once, at start-up
cap_onednn_isa(snakemake.config["onednn_max_isa"])

from pathlib import Path

from zoobot_core.bases import resolve_base
from zoobot_core.finetune import FinetuneConfig
from zoobot_core.finetune_io import finetune_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
# in_job: the Snakefile fetched and checked the base before any job ran; here it is only read (no download on a compute node)
base = resolve_base(p.base_model, default_model=snakemake.input.base[0] if p.base_model is None else None, in_job=True)
out_dir = Path(snakemake.output.metrics).parent
finetune_files(
    snakemake.input.ready, snakemake.input.accounting, out_dir / "labelled/shards", base, p.label_column, out_dir,
    FinetuneConfig(**p.settings, seed=p.seed), threads=snakemake.threads,
)

"""Rule finetune_model: a new head on the trained base for the configured label."""

from pathlib import Path

from zoobot_core.catalog import CatalogConfig
from zoobot_core.finetune import FinetuneConfig, finetune_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
catalog = CatalogConfig(**p.catalog, label_cols=(p.label_column,), label_kind="values", allow_unlabelled=False)
finetune_files(
    snakemake.input.model, snakemake.input.catalog, catalog, p.label_column, Path(snakemake.output.metrics).parent,
    FinetuneConfig(**p.settings, seed=p.seed), threads=snakemake.threads,
)

"""Rule validate_catalog: validated table + quarantine table."""

from zoobot_core.catalog import CatalogConfig, validate_catalog_file
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
params = dict(snakemake.params)
params["label_cols"] = tuple(params["label_cols"])
params["question_totals"] = tuple((total, tuple(answers)) for total, answers in params["question_totals"])
validate_catalog_file(snakemake.input.catalog, snakemake.output.validated, snakemake.output.quarantine, CatalogConfig(**params))

"""Rule make_synthetic_catalog: render the synthetic catalog."""

from pathlib import Path

from zoobot_core.io import setup_logging
from zoobot_core.synthetic import SyntheticConfig, make_synthetic_catalog

setup_logging(snakemake.log[0])
make_synthetic_catalog(Path(snakemake.output.catalog).parent, SyntheticConfig(**snakemake.params))

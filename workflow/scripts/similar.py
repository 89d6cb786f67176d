"""Rule similar: the galaxies most like each configured query galaxy."""

from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging
from zoobot_core.similarity import similar_files

setup_logging(snakemake.log[0])
i, o, params = snakemake.input, snakemake.output, snakemake.params
similar_files(i.clusters, i.ready, list(params.query_ids), params.k, o.neighbours, o.montage, ResizeConfig(**params.view))

"""Rule cluster: PCA + KMeans on representations, table and montage."""

from zoobot_core.cluster import ClusterConfig, cluster_files
from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
params = dict(snakemake.params)
view = ResizeConfig(**params.pop("view"))
cluster_files(
    list(snakemake.input.representations),
    snakemake.input.ready,
    snakemake.output.clusters,
    snakemake.output.pca,
    snakemake.output.montage,
    ClusterConfig(**params),
    view,
)

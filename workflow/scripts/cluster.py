"""Rule cluster: PCA + KMeans on representations, table and montage."""

from zoobot_core.cluster import ClusterConfig, cluster_files
from zoobot_core.io import setup_logging

setup_logging(snakemake.log[0])
cluster_files(
    list(snakemake.input.representations),
    snakemake.input.ready,
    snakemake.output.clusters,
    snakemake.output.pca,
    snakemake.output.montage,
    ClusterConfig(**snakemake.params),
)

"""Rule acquire: rank galaxies by BALD mutual information; the top ones to send to volunteers."""

from zoobot_core.acquisition import AcquireConfig, acquire_files
from zoobot_core.images import ResizeConfig
from zoobot_core.io import setup_logging
from zoobot_core.schemas import get_tree

setup_logging(snakemake.log[0])
params = snakemake.params
acquire_files(
    snakemake.input.samples,
    snakemake.input.ready,
    snakemake.output.ranked,
    snakemake.output.top,
    snakemake.output.montage,
    get_tree(params.tree, params.question_suffix),
    AcquireConfig(
        n_volunteers=params.n_volunteers,
        top_n=params.top_n,
        exact_max_outcomes=params.exact_max_outcomes,
        mc_draws=params.mc_draws,
        montage=params.montage,
        seed=params.seed,
    ),
    ResizeConfig(**params.view),
    recalibration_path=snakemake.input.get("recalibration"),
)

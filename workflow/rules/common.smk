import pandas as pd

from zoobot_core.schemas import get_tree

RUN = config["run_name"]
SPLITS = ["train", "val", "test", "unlabelled"]

if not config["synthetic"]["enabled"] and not config["catalog"]["path"]:
    raise ValueError(
        "Set catalog.path to your catalog (CSV or Parquet), or set synthetic.enabled: true"
    )


wildcard_constraints:
    run="[A-Za-z0-9._-]+",
    split="|".join(SPLITS),
    chunk=r"\d+",


def decision_tree():
    """The configured Galaxy Zoo tree, its columns spelled with the configured suffix."""
    return get_tree(config["catalog"]["tree"], config["catalog"]["question_suffix"])


def catalog_input(wildcards):
    """The catalog to validate: the synthetic one, or the user's."""
    if config["synthetic"]["enabled"]:
        return f"results/{wildcards.run}/synthetic/catalog.csv"
    return config["catalog"]["path"]


def image_root(wildcards):
    """Folder that relative image paths resolve against (None: the catalog's folder)."""
    return None if config["synthetic"]["enabled"] else config["catalog"]["image_root"]


def resized_chunks(wildcards):
    """One resized-image folder per chunk of the validated catalog (known after validation)."""
    validated = checkpoints.validate_catalog.get(run=wildcards.run).output.validated
    chunks = sorted(pd.read_parquet(validated, columns=["chunk"])["chunk"].unique())
    return expand("results/{run}/images/chunk_{chunk}", run=wildcards.run, chunk=chunks)


def all_outputs():
    """Everything a full run produces."""
    return [
        f"results/{RUN}/catalog/accounting.json",
        f"results/{RUN}/provenance.json",
        f"results/{RUN}/report/prediction_examples.png",
        f"results/{RUN}/evaluation/metrics.json",
        f"results/{RUN}/clusters/clusters.parquet",
        f"results/{RUN}/clusters/montage.png",
        *(
            [f"results/{RUN}/similar/neighbours.png"]
            if config["cluster"]["query_ids"]
            else []
        ),
        *expand(
            "results/{run}/predictions/{split}.{ext}",
            run=RUN,
            split=config["predict"]["splits"],
            ext=["parquet", "hdf5"] if config["predict"]["hdf5"] else ["parquet"],
        ),
    ]


def finetune_target(wildcards):
    """The finetuned model's metrics, once a labelled catalog is configured."""
    if not config["finetune"]["catalog"]:
        raise ValueError(
            "Set finetune.catalog (and finetune.label_column) to finetune; see config/finetune_rings.yaml"
        )
    return f"results/{RUN}/finetune/metrics.json"

import functools
import json
from pathlib import Path

import pandas as pd
from snakemake.logging import logger

from zoobot_core.bases import (
    ENCODER,
    ENCODER_SIZE,
    NONE,
    PIPELINE,
    BaseModelError,
    resolve_base,
)
from zoobot_core.encoders import describe_encoder
from zoobot_core.encoders.hub import encoder_folder
from zoobot_core.encoders.weights import weights_file
from zoobot_core.catalog import chunk_digests_file
from zoobot_core.fits_images import FitsConfig
from zoobot_core.schemas import get_tree

RUN = config["run_name"]

# FITS settings the schema cannot check (scales for as many bands as chosen) stop the run here, not in every resize job
FitsConfig(**config["images"]["fits"])
SPLITS = ["train", "val", "test", "unlabelled"]

if not config["synthetic"]["enabled"] and not config["catalog"]["path"]:
    raise ValueError(
        "Set catalog.path to your catalog (CSV or Parquet), or set synthetic.enabled: true"
    )


wildcard_constraints:
    # as the schema's run_name pattern: not only dots, no '/', so no target reaches results/../
    run="[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*",
    split="|".join(SPLITS),
    chunk=r"\d+",
    dataset="labelled|survey",


# representations.encoder set: the catalog's representations come from that Zoobot 2 encoder, nothing is trained and no
# votes are read (every galaxy is in the unlabelled split)
ENCODER_MODE = bool(config["representations"]["encoder"])


@functools.cache
def representation_encoder():
    """representations.encoder as a local folder. In the process that schedules the jobs it is fetched into Hugging Face's
    cache now, before any job (a compute node may have no internet), and checked to be an architecture built here, with
    weights that fit it; the run stops here, naming the fix, otherwise. A job (which parses this file again) only reads
    the cache or the folder.
    """
    name = config["representations"]["encoder"]
    try:
        folder = encoder_folder(name, download=workflow.is_main_process)
        if workflow.is_main_process:
            describe_encoder(folder)
    # unavailable, an architecture not built here, unsafe or unfitting weights
    except (ValueError, OSError) as err:
        raise ValueError(f"representations.encoder {name!r}: {err}") from err
    if workflow.is_main_process and config["images"]["size"] != ENCODER_SIZE:
        logger.warning(
            f"representations.encoder: images.size is {config['images']['size']} px; Zoobot 2's encoders were trained on "
            f"{ENCODER_SIZE} px images. Set images.size: {ENCODER_SIZE} for the representations they were made for."
        )
    return str(Path(folder).resolve())


def encoder_input(wildcards):
    """The encoder's config.json and weights file: the encode rule reruns when they change, and its job reads them."""
    folder = Path(representation_encoder())
    return {
        "encoder_config": str(folder / "config.json"),
        "encoder_weights": str(weights_file(folder)),
    }


if ENCODER_MODE:
    representation_encoder()


def label_columns():
    """The vote columns read from the catalog: the tree's, or none when an encoder gives the representations."""
    return [] if ENCODER_MODE else decision_tree().label_cols


def representation_files(wildcards):
    """The representations clustering reads: the encoder's (its unlabelled split: every galaxy) or the trained model's splits."""
    if ENCODER_MODE:
        return [f"results/{wildcards.run}/encoder/representations/unlabelled.parquet"]
    return expand(
        "results/{run}/representations/{split}.parquet",
        run=wildcards.run,
        split=config["cluster"]["splits"],
    )


def training_outputs_input(wildcards):
    """The trained model's config for provenance (its training environment); nothing when an encoder replaces training."""
    if ENCODER_MODE:
        return {}
    return {"model_config": f"results/{wildcards.run}/model/model_config.json"}


@functools.cache
def decision_tree():
    """The configured Galaxy Zoo tree (a shipped name or the user's YAML file), columns spelled with the configured suffix.

    Read and checked when the workflow is parsed: a malformed tree file stops the run at start, naming the problem.
    Rules pass its definition (DecisionTree.to_dict) as a param, so editing a tree file reruns what depends on it.
    """
    return get_tree(config["catalog"]["tree"], config["catalog"]["question_suffix"])


def catalog_input(wildcards):
    """The catalog to validate: the synthetic one, or the user's."""
    if config["synthetic"]["enabled"]:
        return f"results/{wildcards.run}/synthetic/catalog.csv"
    return config["catalog"]["path"]


def image_root(wildcards):
    """Folder that relative image paths resolve against (None: the catalog's folder)."""
    return None if config["synthetic"]["enabled"] else config["catalog"]["image_root"]


def sorted_settings(settings):
    """A config section with its keys sorted (recursively): Snakemake compares params as written, so the order of
    keys in a user's YAML file must not decide whether a rule reruns."""
    if isinstance(settings, dict):
        return {key: sorted_settings(settings[key]) for key in sorted(settings)}
    return settings


def training_settings():
    """train.* as train_model's params (its rerun triggers): all but the GPU request (a scheduler's resource; the
    GPUs training saw are recorded in model_config.json) and the TensorBoard switch (logs only).
    """
    return sorted_settings(
        {k: v for k, v in config["train"].items() if k not in ("gpus", "tensorboard")}
    )


def predict_settings():
    """The MC-dropout sampling settings (predict.PredictConfig) of the predict and recalibrate rules: the
    recalibration is fitted on the same mixture of samples that predictions apply it to.
    """
    return {
        "n_samples": config["predict"]["n_samples"],
        "batch_size": config["predict"]["batch_size"],
        "seed": config["seed"],
        "tta_views": config["predict"]["tta_views"],
    }


def recalibration_input(wildcards):
    """The model's recalibration (fitted on the validation split) where calibration.recalibrate is on; nothing otherwise."""
    if config["calibration"]["recalibrate"]:
        return {"recalibration": f"results/{wildcards.run}/model/recalibration.json"}
    return {}


def view_settings():
    """How catalog images become what the model sees (images.ResizeConfig): size, the speed knobs, FITS.
    Figures pass it to show galaxies so; no resized copies are kept."""
    keys = ("draft_tolerance", "fits", "reducing_gap", "size")
    return sorted_settings({key: config["images"][key] for key in keys})


def resize_settings():
    """How write_shards resizes each catalog image; the PNG level only matters to PNG-encoded shards, so it
    is a rerun trigger only for them."""
    settings = view_settings()
    if config["shards"]["image_encoding"] == "encoded":
        settings["png_compress_level"] = config["images"]["png_compress_level"]
    return settings


def all_outputs():
    """Everything a full run produces: with representations.encoder, the catalog's accounting, provenance,
    clusters and neighbours from the encoder's representations (nothing trained or predicted).
    """
    if ENCODER_MODE:
        return [
            f"results/{RUN}/catalog/accounting.json",
            f"results/{RUN}/provenance.json",
            f"results/{RUN}/clusters/clusters.parquet",
            f"results/{RUN}/clusters/montage.png",
            *(
                [f"results/{RUN}/similar/neighbours.png"]
                if config["cluster"]["query_ids"]
                else []
            ),
        ]
    return [
        f"results/{RUN}/catalog/accounting.json",
        f"results/{RUN}/provenance.json",
        f"results/{RUN}/report/prediction_examples.png",
        f"results/{RUN}/evaluation/metrics.json",
        f"results/{RUN}/evaluation/calibration.json",
        f"results/{RUN}/acquisition/top.csv",
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


def finetune_dataset(name):
    """Where a finetuning catalog is and how to read it: 'labelled' (finetune.*) or 'survey' (finetune.survey.*)."""
    settings = (
        config["finetune"] if name == "labelled" else config["finetune"]["survey"]
    )
    if not settings["catalog"]:
        key = "finetune.catalog" if name == "labelled" else "finetune.survey.catalog"
        raise ValueError(
            f"Set {key} to a catalog (CSV or Parquet); see config/finetune_rings.yaml"
        )
    return settings


def finetune_label_cols(name):
    """The label column of the labelled catalog; the survey's rows have none."""
    return [config["finetune"]["label_column"]] if name == "labelled" else []


def finetune_label_settings(name):
    """How the labelled catalog's labels are checked (classes or values); constants for the survey."""
    if name == "survey":
        return {"label_kind": "values", "n_classes": 2, "label_threshold": None}
    task = config["finetune"]["settings"]["task"]
    return {
        "label_kind": "values" if task == "regression" else "classes",
        "n_classes": config["finetune"]["settings"]["n_classes"],
        "label_threshold": config["finetune"]["label_threshold"],
    }


_BASE = {}


def finetune_base(wildcards=None):
    """finetune.base_model resolved and checked now, before any job runs (ImageNet weights are fetched
    into Keras' cache here once, or the run stops naming the file): a dict for BaseSpec.
    """
    if "spec" not in _BASE:
        try:
            # a job parses this file again: there the base is only read, never downloaded
            spec = resolve_base(
                config["finetune"]["base_model"],
                default_model=f"results/{RUN}/model/model.keras",
                in_job=not workflow.is_main_process,
            )
        except BaseModelError as err:
            raise ValueError(str(err)) from err
        _BASE["spec"] = {"kind": spec.kind, "path": spec.path}
    return _BASE["spec"]


def finetune_base_input(wildcards):
    """The base's file (the run's own model is trained first), an encoder's config.json and weights; nothing for random weights."""
    base = finetune_base()
    if base["kind"] == ENCODER:
        return [
            str(Path(base["path"]) / "config.json"),
            str(weights_file(Path(base["path"]))),
        ]
    return [] if base["kind"] == NONE else [base["path"]]


def finetune_image_size():
    """finetune.image_size, or the base's own size: this run's images.size for its own model, the
    model_config.json beside another pipeline model, 224 px (EfficientNet's) for imagenet and none.
    """
    if config["finetune"]["image_size"]:
        return config["finetune"]["image_size"]
    if not config["finetune"]["catalog"]:
        return config["images"]["size"]
    base = finetune_base()
    if base["kind"] != PIPELINE:
        return 224
    if config["finetune"]["base_model"] is None:
        return config["images"]["size"]
    model_config = Path(base["path"]).parent / "model_config.json"
    if not model_config.is_file():
        raise ValueError(
            f"{model_config} not found: set finetune.image_size to the size to finetune {base['path']} at"
        )
    return json.loads(model_config.read_text())["input_size"]


@functools.lru_cache(maxsize=8)
def _chunk_digests(validated, version, label_cols):
    """catalog.chunk_digests_file of one version (mtime, size, inode) of a validated catalog, read once for all
    its chunk jobs."""
    return chunk_digests_file(validated, list(label_cols))


def catalog_chunks(validated, label_cols=()):
    """Chunk number -> digest of what its shards hold, for a validated catalog file (known after its validation)."""
    info = Path(validated).stat()
    return _chunk_digests(
        validated, (info.st_mtime_ns, info.st_size, info.st_ino), tuple(label_cols)
    )


def chunk_rows(chunks, wildcards, catalog):
    """The digest of one chunk's galaxies: its shard job's rerun trigger."""
    if int(wildcards.chunk) not in chunks:
        raise ValueError(
            f"The {catalog} has no chunk {wildcards.chunk}; its chunks are {sorted(chunks)}"
        )
    return chunks[int(wildcards.chunk)]


def main_chunks(wildcards):
    """Chunk number -> digest (ids, image paths, votes) for the main catalog, known after validation."""
    validated = checkpoints.validate_catalog.get(run=wildcards.run).output.validated
    return catalog_chunks(validated, label_columns())


def main_shard_chunks(wildcards):
    """One shard folder per chunk of the main catalog."""
    return expand(
        "results/{run}/shards/chunk_{chunk}",
        chunk=sorted(main_chunks(wildcards)),
        run=wildcards.run,
    )


def main_chunk_rows(wildcards):
    """The digest of one chunk of the main catalog (ids, image paths, votes): write_shards' rerun trigger."""
    return chunk_rows(main_chunks(wildcards), wildcards, "catalog")


def finetune_chunks(wildcards, dataset=None):
    """Chunk number -> digest of its galaxies, for a validated finetuning catalog (known after validation)."""
    validated = checkpoints.validate_finetune_catalog.get(
        run=wildcards.run, dataset=dataset or wildcards.dataset
    ).output.validated
    return catalog_chunks(validated)


def finetune_shard_chunks(wildcards, dataset=None):
    """One shard folder per chunk of a validated finetuning catalog (`dataset`, else the wildcard's)."""
    dataset = dataset or wildcards.dataset
    return expand(
        "results/{run}/finetune/{dataset}/shards/chunk_{chunk}",
        chunk=sorted(finetune_chunks(wildcards, dataset)),
        run=wildcards.run,
        dataset=dataset,
    )


def finetune_resize_settings():
    """resize_settings at the finetuning size: how write_finetune_shards resizes each catalog image."""
    return {**resize_settings(), "size": finetune_image_size()}


def finetune_chunk_rows(wildcards):
    """The digest of one chunk's galaxies (ids and image paths): write_finetune_shards' rerun trigger."""
    return chunk_rows(
        finetune_chunks(wildcards), wildcards, f"{wildcards.dataset} catalog"
    )


def combined_shard_files(root):
    """What gathering writes beside a catalog's shard chunks: their manifest, per-split catalogs, unreadable images
    and shards.json together (chunk_shards.write_combined), which readers take as one folder of shards.
    """
    names = {
        "manifest": "manifest.parquet",
        "unreadable": "unreadable.parquet",
        "shards": "shards.json",
    }
    names.update({f"{split}_catalog": f"{split}_catalog.parquet" for split in SPLITS})
    return {key: f"{root}/{name}" for key, name in names.items()}


def check_finetune_sizes():
    """The base network's input after the configured crop and resize must be at least 32 px: say so now (a Zoobot 2
    encoder's default is 224 px, whatever the crop)."""
    settings = config["finetune"]["settings"]
    size = finetune_image_size()
    crop = int(round(size * settings["crop_fraction"]))
    default = ENCODER_SIZE if finetune_base()["kind"] == ENCODER else crop
    if (settings["resize_size"] or default) < 32:
        raise ValueError(
            f"finetune.image_size {size} cropped to {crop} px is below the base network's 32 px: "
            "set finetune.image_size or finetune.settings.crop_fraction larger, or finetune.settings.resize_size >= 32"
        )


def finetune_target(wildcards):
    """The finetuned model, its cross-validation figures, and the survey's predictions if configured."""
    # stop with a clear message when no catalog is configured or the images would be too small
    finetune_dataset("labelled")
    check_finetune_sizes()
    outputs = [
        f"results/{RUN}/finetune/metrics.json",
        f"results/{RUN}/finetune/scores.png",
        f"results/{RUN}/finetune/roc.png",
        f"results/{RUN}/finetune/surest_examples.png",
    ]
    if config["finetune"]["survey"]["catalog"]:
        outputs.append(f"results/{RUN}/finetune/survey/predictions.parquet")
        if config["finetune"]["survey"]["hdf5"]:
            outputs.append(f"results/{RUN}/finetune/survey/predictions.hdf5")
    return outputs

# `snakemake finetune --configfile config/finetune_rings.yaml`: a new label learnt on a base, scored by
# cross-validation beside baselines, the final model, and (finetune.survey.catalog) its predictions
# for a whole survey. Both catalogs go through the pipeline's own validation, and their images go straight into
# shards as the main chain's do (zoobot_core/chunk_shards.py), in at most images.max_chunks jobs.


checkpoint validate_finetune_catalog:
    input:
        catalog=lambda wildcards: finetune_dataset(wildcards.dataset)["catalog"],
    output:
        validated="results/{run}/finetune/{dataset}/catalog/validated.parquet",
        quarantine="results/{run}/finetune/{dataset}/catalog/quarantine_validation.parquet",
    log:
        "logs/{run}/finetune/{dataset}/validate_catalog.log",
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        id_column=lambda wildcards: finetune_dataset(wildcards.dataset)["id_column"],
        file_column=lambda wildcards: finetune_dataset(wildcards.dataset)["file_column"],
        image_root=lambda wildcards: finetune_dataset(wildcards.dataset)["image_root"],
        # the survey's rows carry no labels: its validation does not depend on the label settings
        label_cols=lambda wildcards: finetune_label_cols(wildcards.dataset),
        label_kind=lambda wildcards: finetune_label_settings(wildcards.dataset)[
            "label_kind"
        ],
        n_classes=lambda wildcards: finetune_label_settings(wildcards.dataset)[
            "n_classes"
        ],
        label_threshold=lambda wildcards: finetune_label_settings(wildcards.dataset)[
            "label_threshold"
        ],
        question_totals=[],
        allow_unlabelled=lambda wildcards: wildcards.dataset == "survey",
        max_quarantine_fraction=config["finetune"]["max_quarantine_fraction"],
        chunk_size=config["images"]["chunk_size"],
        max_chunks=config["images"]["max_chunks"],
    script:
        "../scripts/validate_catalog.py"


# A chunk's galaxies follow a hash of their ids. Its job reruns when they change (the `rows` digest, a params
# trigger), not whenever validation rewrites the catalog (ancient): adding galaxies rewrites only their chunks.
# Worker processes read, resize and write each image straight into the chunk's shards (no resized copies).
rule write_finetune_shards:
    input:
        validated=ancient("results/{run}/finetune/{dataset}/catalog/validated.parquet"),
    output:
        directory("results/{run}/finetune/{dataset}/shards/chunk_{chunk}"),
    log:
        "logs/{run}/finetune/{dataset}/write_shards/chunk_{chunk}.log",
    benchmark:
        "benchmarks/{run}/finetune/{dataset}/write_shards/chunk_{chunk}.tsv"
    conda:
        "../envs/zoobot.yaml"
    # every core the run is given, as the main chain's write_shards (Snakemake lowers it to --cores)
    threads: 64
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        rows=finetune_chunk_rows,
        size=lambda wildcards: finetune_image_size(),
        shard_size=config["shards"]["shard_size"],
        image_encoding=config["shards"]["image_encoding"],
        seed=config["seed"],
        resize=lambda wildcards: finetune_resize_settings(),
    script:
        "../scripts/write_shards.py"


rule gather_finetune_images:
    input:
        validated="results/{run}/finetune/{dataset}/catalog/validated.parquet",
        quarantine="results/{run}/finetune/{dataset}/catalog/quarantine_validation.parquet",
        chunks=finetune_shard_chunks,
    output:
        **combined_shard_files("results/{run}/finetune/{dataset}/shards"),
        ready="results/{run}/finetune/{dataset}/catalog/ready.parquet",
        quarantine="results/{run}/finetune/{dataset}/catalog/quarantine.parquet",
        accounting="results/{run}/finetune/{dataset}/catalog/accounting.json",
    log:
        "logs/{run}/finetune/{dataset}/gather_images.log",
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        max_quarantine_fraction=config["finetune"]["max_quarantine_fraction"],
        label_cols=[],
        chunk_rule="write_finetune_shards",
        shard_files=True,
    script:
        "../scripts/gather_chunks.py"


rule finetune_model:
    input:
        ready="results/{run}/finetune/labelled/catalog/ready.parquet",
        accounting="results/{run}/finetune/labelled/catalog/accounting.json",
        chunks=lambda wildcards: finetune_shard_chunks(wildcards, "labelled"),
        base=finetune_base_input,
    output:
        model="results/{run}/finetune/model.keras",
        settings="results/{run}/finetune/finetune_config.json",
        cv_predictions="results/{run}/finetune/cv_predictions.parquet",
        cv_metrics=report(
            "results/{run}/finetune/cv_metrics.csv",
            caption="../report/finetune.rst",
            category="8. Finetuning",
        ),
        history="results/{run}/finetune/history.csv",
        metrics="results/{run}/finetune/metrics.json",
    log:
        "logs/{run}/finetune/finetune_model.log",
    benchmark:
        "benchmarks/{run}/finetune/finetune_model.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(1, config["train"]["gpus"]),
    params:
        # as configured (null, imagenet, none or a path), not the resolved file: moving the checkout or
        # the Keras cache must not rerun finetuning
        base_model=config["finetune"]["base_model"],
        label_column=config["finetune"]["label_column"],
        settings=config["finetune"]["settings"],
        seed=config["seed"],
    script:
        "../scripts/finetune.py"


rule finetune_figures:
    input:
        cv_predictions="results/{run}/finetune/cv_predictions.parquet",
        metrics="results/{run}/finetune/metrics.json",
        ready="results/{run}/finetune/labelled/catalog/ready.parquet",
        chunks=lambda wildcards: finetune_shard_chunks(wildcards, "labelled"),
    output:
        scores=report(
            "results/{run}/finetune/scores.png",
            caption="../report/finetune.rst",
            category="8. Finetuning",
        ),
        roc=report(
            "results/{run}/finetune/roc.png",
            caption="../report/finetune_roc.rst",
            category="8. Finetuning",
        ),
        examples=report(
            "results/{run}/finetune/surest_examples.png",
            caption="../report/finetune_examples.rst",
            category="8. Finetuning",
        ),
        reliability=report(
            "results/{run}/finetune/reliability.png",
            caption="../report/finetune_reliability.rst",
            category="8. Finetuning",
        ),
    log:
        "logs/{run}/finetune/finetune_figures.log",
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/finetune_figures.py"


rule predict_survey:
    input:
        model="results/{run}/finetune/model.keras",
        settings="results/{run}/finetune/finetune_config.json",
        # gathered first: a chunk's unreadable images are quarantined and counted before any prediction
        ready="results/{run}/finetune/survey/catalog/ready.parquet",
        chunks=lambda wildcards: finetune_shard_chunks(wildcards, "survey"),
    output:
        **(
            {"hdf5": "results/{run}/finetune/survey/predictions.hdf5"}
            if config["finetune"]["survey"]["hdf5"]
            else {}
        ),
        predictions="results/{run}/finetune/survey/predictions.parquet",
    log:
        "logs/{run}/finetune/predict_survey.log",
    benchmark:
        "benchmarks/{run}/finetune/predict_survey.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(1, config["train"]["gpus"]),
    params:
        batch_size=config["finetune"]["survey"]["batch_size"],
        seed=config["seed"],
    script:
        "../scripts/predict_survey.py"


# `snakemake finetune`: the cross-validated finetuned model with its figures, and the survey's
# predictions when finetune.survey.catalog is set
rule finetune:
    input:
        finetune_target,

# a checkpoint: the catalog's chunks (one shard job each) are known once it is validated
checkpoint validate_catalog:
    input:
        catalog=catalog_input,
    output:
        validated="results/{run}/catalog/validated.parquet",
        quarantine="results/{run}/catalog/quarantine_validation.parquet",
    log:
        "logs/{run}/validate_catalog.log",
    benchmark:
        "benchmarks/{run}/validate_catalog.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        id_column=config["catalog"]["id_column"],
        file_column=config["catalog"]["file_column"],
        image_root=image_root,
        label_cols=label_columns(),
        question_totals=[] if ENCODER_MODE else decision_tree().question_totals,
        allow_unlabelled=ENCODER_MODE or config["catalog"]["allow_unlabelled"],
        # the limit is checked by write_shards before it reads an image, and by gather_images: changing it validates nothing again
        max_quarantine_fraction=1.0,
        chunk_size=config["images"]["chunk_size"],
        max_chunks=config["images"]["max_chunks"],
    script:
        "../scripts/validate_catalog.py"

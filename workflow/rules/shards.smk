rule write_shards:
    input:
        validated="results/{run}/catalog/validated.parquet",
        # catalog.max_quarantine_fraction is checked against it before any image is read (the script reads the limit
        # from the config: it changes no shard, so it is not a param, and a new limit rewrites nothing)
        quarantine="results/{run}/catalog/quarantine_validation.parquet",
    output:
        directory("results/{run}/shards"),
    log:
        "logs/{run}/write_shards.log",
    benchmark:
        "benchmarks/{run}/write_shards.tsv"
    conda:
        "../envs/zoobot.yaml"
    # every core the run is given (Snakemake lowers it to --cores; the SLURM profile sets its own)
    threads: 64
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        size=config["images"]["size"],
        label_cols=label_columns(),
        shard_size=config["shards"]["shard_size"],
        image_encoding=config["shards"]["image_encoding"],
        train_fraction=config["shards"]["train_fraction"],
        val_fraction=config["shards"]["val_fraction"],
        seed=config["seed"],
        resize=resize_settings(),
    script:
        "../scripts/resize_to_shards.py"

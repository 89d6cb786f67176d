# The main catalog's images go into shards in chunks (zoobot_core/chunk_shards.py: every catalog's one image path).
# A chunk's galaxies follow a hash of their ids; its job reruns when they change (the `rows` digest of their ids,
# image paths and votes: a params trigger), not whenever validation rewrites the catalog (ancient): adding
# galaxies, or correcting some votes, rewrites only their chunks. Worker processes read, resize and write each
# image straight into the chunk's shards (no resized copies). gather_images (images.smk) joins the chunks.
rule write_shards:
    input:
        validated=ancient("results/{run}/catalog/validated.parquet"),
        # catalog.max_quarantine_fraction is checked against it before any image is read (the script reads the limit
        # from the config: it changes no shard, so it is not a param, and a new limit rewrites nothing)
        quarantine=ancient("results/{run}/catalog/quarantine_validation.parquet"),
    output:
        directory("results/{run}/shards/chunk_{chunk}"),
    log:
        "logs/{run}/write_shards/chunk_{chunk}.log",
    benchmark:
        "benchmarks/{run}/write_shards/chunk_{chunk}.tsv"
    conda:
        "../envs/zoobot.yaml"
    # every core the run is given (Snakemake lowers it to --cores; the SLURM profile sets its own)
    threads: 64
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        rows=main_chunk_rows,
        size=config["images"]["size"],
        label_cols=label_columns(),
        shard_size=config["shards"]["shard_size"],
        image_encoding=config["shards"]["image_encoding"],
        train_fraction=config["shards"]["train_fraction"],
        val_fraction=config["shards"]["val_fraction"],
        seed=config["seed"],
        resize=resize_settings(),
    script:
        "../scripts/write_shards.py"

# The main catalog's shard chunks joined, in two rules. combine_shards writes the chunks' shard files together in
# results/{run}/shards/ (their shards.json is what training, prediction and the rest take as input): it reruns
# when a chunk does, and refuses a catalog over catalog.max_quarantine_fraction (read from the config, not a
# param, so a new limit retrains nothing). gather_images writes the ready catalog (each galaxy's split, shard and
# record), the full quarantine table and the row accounting for the report; a new limit re-gathers, in seconds.
rule combine_shards:
    input:
        # read to check each chunk against the catalog: a rewrite of it that changes no chunk changes nothing here
        validated=ancient("results/{run}/catalog/validated.parquet"),
        quarantine=ancient("results/{run}/catalog/quarantine_validation.parquet"),
        chunks=main_shard_chunks,
    output:
        **combined_shard_files("results/{run}/shards"),
    log:
        "logs/{run}/combine_shards.log",
    benchmark:
        "benchmarks/{run}/combine_shards.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        label_cols=label_columns(),
    script:
        "../scripts/combine_shards.py"


rule gather_images:
    input:
        validated="results/{run}/catalog/validated.parquet",
        quarantine="results/{run}/catalog/quarantine_validation.parquet",
        chunks=main_shard_chunks,
    output:
        ready="results/{run}/catalog/ready.parquet",
        quarantine="results/{run}/catalog/quarantine.parquet",
        accounting="results/{run}/catalog/accounting.json",
    log:
        "logs/{run}/gather_images.log",
    benchmark:
        "benchmarks/{run}/gather_images.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        max_quarantine_fraction=config["catalog"]["max_quarantine_fraction"],
        label_cols=label_columns(),
        chunk_rule="write_shards",
        shard_files=False,
    script:
        "../scripts/gather_chunks.py"


# `snakemake shards`: the catalog as shards ready for training (validation, every chunk, combined and gathered) and
# nothing more. `--until <rule>` stops at validation now that it is a checkpoint (Snakemake 9).
localrules:
    shards,


rule shards:
    input:
        f"results/{RUN}/catalog/ready.parquet",
        f"results/{RUN}/shards/shards.json",

rule write_shards:
    input:
        ready="results/{run}/catalog/ready.parquet",
    output:
        directory("results/{run}/shards"),
    log:
        "logs/{run}/write_shards.log",
    benchmark:
        "benchmarks/{run}/write_shards.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        size=config["images"]["size"],
        label_cols=decision_tree().label_cols,
        shard_size=config["shards"]["shard_size"],
        image_encoding=config["shards"]["image_encoding"],
        train_fraction=config["shards"]["train_fraction"],
        val_fraction=config["shards"]["val_fraction"],
        seed=config["seed"],
    script:
        "../scripts/write_shards.py"

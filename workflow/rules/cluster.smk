rule encode:
    input:
        unpack(encoder_input),
        shards="results/{run}/shards/shards.json",
    output:
        representations="results/{run}/encoder/representations/{split}.parquet",
    log:
        "logs/{run}/encode/{split}.log",
    benchmark:
        "benchmarks/{run}/encode/{split}.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(1, config["train"]["gpus"]),
    params:
        # as configured (hf_hub:<repo> or a folder), not the resolved cache folder: moving the cache reruns nothing
        encoder=config["representations"]["encoder"],
        batch_size=config["representations"]["batch_size"],
    script:
        "../scripts/encode.py"


rule cluster:
    input:
        representations=representation_files,
        ready="results/{run}/catalog/ready.parquet",
    output:
        clusters="results/{run}/clusters/clusters.parquet",
        pca="results/{run}/representations/pca.parquet",
        montage=report(
            "results/{run}/clusters/montage.png",
            caption="../report/montage.rst",
            category="6. Clusters",
        ),
    log:
        "logs/{run}/cluster.log",
    benchmark:
        "benchmarks/{run}/cluster.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=6000,  # 4.3 GB peak at 300,000 x 1280 representations (tests/benchmarks/bench_cluster.py)
        runtime=30,
    params:
        view=view_settings(),
        n_components=config["cluster"]["n_components"],
        n_clusters=config["cluster"]["n_clusters"],
        examples_per_cluster=config["cluster"]["examples_per_cluster"],
        method=config["cluster"]["method"],
        min_cluster_size=config["cluster"]["min_cluster_size"],
        seed=config["seed"],
    script:
        "../scripts/cluster.py"


rule similar:
    input:
        clusters="results/{run}/clusters/clusters.parquet",
        ready="results/{run}/catalog/ready.parquet",
    output:
        neighbours="results/{run}/similar/neighbours.parquet",
        montage=report(
            "results/{run}/similar/neighbours.png",
            caption="../report/similar.rst",
            category="7. Similar galaxies",
        ),
    log:
        "logs/{run}/similar.log",
    benchmark:
        "benchmarks/{run}/similar.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        view=view_settings(),
        query_ids=config["cluster"]["query_ids"],
        k=config["cluster"]["n_neighbours"],
    script:
        "../scripts/similar.py"

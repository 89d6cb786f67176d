rule cluster:
    input:
        representations=expand(
            "results/{{run}}/representations/{split}.parquet",
            split=config["cluster"]["splits"],
        ),
        ready="results/{run}/catalog/ready.parquet",
    output:
        clusters="results/{run}/clusters/clusters.parquet",
        montage=report(
            "results/{run}/clusters/montage.png",
            caption="../report/montage.rst",
            category="6. Clusters",
        ),
    log:
        "logs/{run}/cluster.log",
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        n_components=config["cluster"]["n_components"],
        n_clusters=config["cluster"]["n_clusters"],
        examples_per_cluster=config["cluster"]["examples_per_cluster"],
        seed=config["seed"],
    script:
        "../scripts/cluster.py"

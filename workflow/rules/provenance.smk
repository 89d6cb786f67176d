rule provenance:
    input:
        unpack(training_outputs_input),
        catalog=catalog_input,
        validated="results/{run}/catalog/validated.parquet",
        shards="results/{run}/shards/shards.json",
    output:
        provenance="results/{run}/provenance.json",
        images="results/{run}/provenance_images.parquet",
    log:
        "logs/{run}/provenance.log",
    benchmark:
        "benchmarks/{run}/provenance.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        config=sorted_settings(config),
        repo=str(Path(workflow.basedir).parent),
        hash_images=config["provenance"]["hash_images"],
    script:
        "../scripts/provenance.py"

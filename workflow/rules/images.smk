rule resize_images:
    input:
        validated="results/{run}/catalog/validated.parquet",
    output:
        directory("results/{run}/images/chunk_{chunk}"),
    log:
        "logs/{run}/resize_images/chunk_{chunk}.log",
    benchmark:
        "benchmarks/{run}/resize_images/chunk_{chunk}.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        size=config["images"]["size"],
        file_format=config["images"]["format"],
        png_compress_level=config["images"]["png_compress_level"],
        draft_tolerance=config["images"]["draft_tolerance"],
        reducing_gap=config["images"]["reducing_gap"],
        fits=config["images"]["fits"],
    script:
        "../scripts/resize_images.py"


rule gather_images:
    input:
        validated="results/{run}/catalog/validated.parquet",
        quarantine="results/{run}/catalog/quarantine_validation.parquet",
        chunks=resized_chunks,
    output:
        ready="results/{run}/catalog/ready.parquet",
        quarantine="results/{run}/catalog/quarantine.parquet",
        accounting="results/{run}/catalog/accounting.json",
    log:
        "logs/{run}/gather_images.log",
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        max_quarantine_fraction=config["catalog"]["max_quarantine_fraction"],
    script:
        "../scripts/gather_images.py"

rule finetune_model:
    input:
        model=config["finetune"]["base_model"] or "results/{run}/model/model.keras",
        catalog=config["finetune"]["catalog"] or [],
    output:
        model="results/{run}/finetune/model.keras",
        predictions="results/{run}/finetune/predictions.parquet",
        history="results/{run}/finetune/history.csv",
        quarantine="results/{run}/finetune/quarantine.parquet",
        metrics=report(
            "results/{run}/finetune/metrics.json",
            caption="../report/finetune.rst",
            category="8. Finetuning",
        ),
    log:
        "logs/{run}/finetune.log",
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=min(1, config["train"]["gpus"]),
    params:
        catalog=lambda wildcards: {
            "id_column": config["finetune"]["id_column"],
            "file_column": config["finetune"]["file_column"],
            "image_root": config["finetune"]["image_root"],
            "max_quarantine_fraction": config["catalog"]["max_quarantine_fraction"],
        },
        label_column=config["finetune"]["label_column"],
        settings=config["finetune"]["settings"],
        seed=config["seed"],
    script:
        "../scripts/finetune.py"


# `snakemake finetune --configfile config/finetune_rings.yaml`: the base model (trained first if
# needed), then the finetuned one
rule finetune:
    input:
        finetune_target,

rule predict:
    input:
        model="results/{run}/model/model.keras",
        model_config="results/{run}/model/model_config.json",
        shards="results/{run}/shards",
    output:
        predictions="results/{run}/predictions/{split}.parquet",
        representations="results/{run}/representations/{split}.parquet",
    params:
        n_samples=config["predict"]["n_samples"],
        batch_size=config["predict"]["batch_size"],
        seed=config["seed"],
    log:
        "logs/{run}/predict/{split}.log",
    benchmark:
        "benchmarks/{run}/predict/{split}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/zoobot.yaml"
    script:
        "../scripts/predict.py"


rule evaluate:
    input:
        predictions="results/{run}/predictions/test.parquet",
        shards="results/{run}/shards",
    output:
        metrics="results/{run}/evaluation/metrics.json",
        per_question=report(
            "results/{run}/evaluation/per_question.csv",
            caption="../report/evaluation.rst",
            category="Evaluation",
        ),
    params:
        tree=config["catalog"]["tree"],
        question_suffix=config["catalog"]["question_suffix"],
    log:
        "logs/{run}/evaluate.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/zoobot.yaml"
    script:
        "../scripts/evaluate.py"

# a format conversion of a few seconds: not worth a cluster job of its own
localrules:
    predictions_hdf5,


rule predict:
    input:
        unpack(recalibration_input),
        model="results/{run}/model/model.keras",
        model_config="results/{run}/model/model_config.json",
        shards="results/{run}/shards/shards.json",
    output:
        predictions="results/{run}/predictions/{split}.parquet",
        representations="results/{run}/representations/{split}.parquet",
        samples="results/{run}/prediction_samples/{split}.parquet",
    log:
        "logs/{run}/predict/{split}.log",
    benchmark:
        "benchmarks/{run}/predict/{split}.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=min(1, config["train"]["gpus"]),
    params:
        **predict_settings(),
        recalibrate=config["calibration"]["recalibrate"],
    script:
        "../scripts/predict.py"


rule predictions_hdf5:
    input:
        samples="results/{run}/prediction_samples/{split}.parquet",
    output:
        hdf5="results/{run}/predictions/{split}.hdf5",
    log:
        "logs/{run}/predictions_hdf5/{split}.log",
    benchmark:
        "benchmarks/{run}/predictions_hdf5/{split}.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        label_cols=decision_tree().label_cols,
        n_samples=config["predict"]["n_samples"],
        tta_views=config["predict"]["tta_views"],
    script:
        "../scripts/predictions_hdf5.py"


rule evaluate:
    input:
        predictions="results/{run}/predictions/test.parquet",
        shards="results/{run}/shards/shards.json",
    output:
        metrics="results/{run}/evaluation/metrics.json",
        per_question=report(
            "results/{run}/evaluation/per_question.csv",
            caption="../report/evaluation.rst",
            category="4. Evaluation",
        ),
        confident="results/{run}/evaluation/confident.csv",
        confusion="results/{run}/evaluation/confusion.csv",
    log:
        "logs/{run}/evaluate.log",
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tree=decision_tree().to_dict(),
        question_suffix=config["catalog"]["question_suffix"],
        confident_fraction=config["evaluate"]["confident_fraction"],
        min_votes=config["evaluate"]["min_votes"],
    script:
        "../scripts/evaluate.py"

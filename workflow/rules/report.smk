rule report_figures:
    input:
        accounting="results/{run}/catalog/accounting.json",
        quarantine="results/{run}/catalog/quarantine.parquet",
        ready="results/{run}/catalog/ready.parquet",
        history="results/{run}/model/history.csv",
        per_question="results/{run}/evaluation/per_question.csv",
        confident="results/{run}/evaluation/confident.csv",
        confusion="results/{run}/evaluation/confusion.csv",
        predictions="results/{run}/predictions/test.parquet",
        shards="results/{run}/shards/shards.json",
    output:
        accounting=report(
            "results/{run}/report/accounting.png",
            caption="../report/accounting.rst",
            category="1. Catalog",
        ),
        quarantine=report(
            "results/{run}/report/quarantine.csv",
            caption="../report/quarantine.rst",
            category="1. Catalog",
        ),
        resize=report(
            "results/{run}/report/resize_examples.png",
            caption="../report/resize.rst",
            category="2. Images",
        ),
        history=report(
            "results/{run}/report/training_curves.png",
            caption="../report/history.rst",
            category="3. Training",
        ),
        per_question=report(
            "results/{run}/report/per_question.png",
            caption="../report/evaluation.rst",
            category="4. Evaluation",
        ),
        confusion=report(
            "results/{run}/report/confusion.png",
            caption="../report/confusion.rst",
            category="4. Evaluation",
        ),
        predictions=report(
            "results/{run}/report/prediction_examples.png",
            caption="../report/predictions.rst",
            category="5. Predictions",
        ),
    log:
        "logs/{run}/report_figures.log",
    benchmark:
        "benchmarks/{run}/report_figures.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        view=view_settings(),
        tree=decision_tree().to_dict(),
        question_suffix=config["catalog"]["question_suffix"],
    script:
        "../scripts/report_figures.py"

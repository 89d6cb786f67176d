# The validation split's raw posterior, predicted as the predict rule samples it, fits a map of each question's
# concentrations that the predict rule then applies (calibration.recalibrate); test never enters the fit.
rule recalibrate:
    input:
        model="results/{run}/model/model.keras",
        model_config="results/{run}/model/model_config.json",
        shards="results/{run}/shards/shards.json",
    output:
        "results/{run}/model/recalibration.json",
    log:
        "logs/{run}/recalibrate.log",
    benchmark:
        "benchmarks/{run}/recalibrate.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=min(1, config["train"]["gpus"]),
    params:
        predict=predict_settings(),
        method=config["calibration"]["method"],
        min_galaxies=config["calibration"]["min_galaxies"],
        min_votes=config["calibration"]["min_votes"],
        folds=config["calibration"]["folds"],
        seed=config["seed"],
    script:
        "../scripts/recalibrate.py"


rule calibration:
    input:
        unpack(recalibration_input),
        samples="results/{run}/prediction_samples/test.parquet",
        shards="results/{run}/shards/shards.json",
    output:
        table=report(
            "results/{run}/evaluation/calibration.csv",
            caption="../report/calibration_table.rst",
            category="4. Evaluation",
        ),
        curve="results/{run}/evaluation/calibration_curve.csv",
        headline="results/{run}/evaluation/calibration.json",
        figure=report(
            "results/{run}/report/calibration.png",
            caption="../report/calibration.rst",
            category="4. Evaluation",
        ),
        pit="results/{run}/evaluation/calibration_pit.csv",
        pit_figure=report(
            "results/{run}/report/calibration_pit.png",
            caption="../report/calibration_pit.rst",
            category="4. Evaluation",
        ),
    log:
        "logs/{run}/calibration.log",
    benchmark:
        "benchmarks/{run}/calibration.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        tree=decision_tree().to_dict(),
        question_suffix=config["catalog"]["question_suffix"],
        levels=config["calibration"]["levels"],
        min_votes=config["calibration"]["min_votes"],
    script:
        "../scripts/calibration.py"


rule acquire:
    input:
        unpack(recalibration_input),
        samples=f"results/{{run}}/prediction_samples/{config['acquire']['split']}.parquet",
        ready="results/{run}/catalog/ready.parquet",
    output:
        ranked="results/{run}/acquisition/ranked.parquet",
        top=report(
            "results/{run}/acquisition/top.csv",
            caption="../report/acquisition_top.rst",
            category="5. Predictions",
        ),
        montage=report(
            "results/{run}/acquisition/next_to_label.png",
            caption="../report/acquisition.rst",
            category="5. Predictions",
        ),
    log:
        "logs/{run}/acquire.log",
    benchmark:
        "benchmarks/{run}/acquire.tsv"
    conda:
        "../envs/zoobot.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        view=view_settings(),
        tree=decision_tree().to_dict(),
        question_suffix=config["catalog"]["question_suffix"],
        n_volunteers=config["acquire"]["n_volunteers"],
        top_n=config["acquire"]["top_n"],
        montage=config["acquire"]["montage"],
        exact_max_outcomes=config["acquire"]["exact_max_outcomes"],
        mc_draws=config["acquire"]["mc_draws"],
        seed=config["seed"],
    script:
        "../scripts/acquire.py"

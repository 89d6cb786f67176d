rule train_model:
    input:
        shards="results/{run}/shards/shards.json",
    output:
        model="results/{run}/model/model.keras",
        model_config="results/{run}/model/model_config.json",
        trained_on="results/{run}/model/trained_on.parquet",
        history=report(
            "results/{run}/model/history.csv",
            caption="../report/history.rst",
            category="3. Training",
        ),
        tensorboard=directory("results/{run}/model/tensorboard"),
    log:
        "logs/{run}/train_model.log",
    benchmark:
        "benchmarks/{run}/train_model.tsv"
    conda:
        "../envs/zoobot.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=config["train"]["gpus"],
    params:
        tree=decision_tree().to_dict(),
        question_suffix=config["catalog"]["question_suffix"],
        # the GPU request (a scheduler's resource) and the TensorBoard switch (logs only) are not rerun triggers:
        # the script reads the switch from the config
        train=training_settings(),
        seed=config["seed"],
        onednn_max_isa=config["onednn_max_isa"],  # set by each TensorFlow job's script; here so a change retrains
        state_dir=lambda wildcards: f"results/{wildcards.run}/train_state",
    script:
        "../scripts/train_model.py"

"""Does choosing galaxies by BALD need fewer labels than choosing at random? A learning-curve experiment.

On the synthetic universe (whose votes are simulated, so every galaxy's labels are known): a fixed
test and validation set, a pool, and a small random labelled start. Each round trains the pipeline's
model from scratch on the labelled galaxies (train_from_shards), scores it on the test set, predicts
the rest of the pool with MC dropout, and adds `n_acquire` galaxies chosen by BALD (acquisition.py)
or at random. Both strategies share each seed's start and first model, and get the same budget.
As in Walmsley et al. (2020), the validation set used for early stopping is labelled for both and
not counted in the budget.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.acquisition import AcquireConfig, bald_scores
from zoobot_core.dirichlet import question_nll
from zoobot_core.io import write_json
from zoobot_core.runtime import leaves_process_state
from zoobot_core.schemas import DecisionTree, get_tree

log = logging.getLogger(__name__)

STRATEGIES = ("bald", "random")
COLUMNS = ("seed", "strategy", "round", "n_labelled", "test_loss", "first_question_loss", "vote_fraction_mae", "confident_accuracy", "epochs", "train_seconds", "seconds")


@dataclass(frozen=True)
class ActiveLearningConfig:
    """Sizes of the synthetic universe's sets, the labelling budget per round, and training settings."""

    n_pool: int = 2000
    n_test: int = 300
    n_val: int = 200
    n_initial: int = 200
    n_acquire: int = 200
    rounds: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    universe_seed: int = 42
    image_size: int = 64
    epochs: int = 40  # small labelled sets need many epochs for the ~150 steps the model needs to beat a constant
    patience: int = 8
    batch_size: int = 32
    n_samples: int = 5
    n_volunteers: int = 40
    tree: str = "gz_decals_dr5"

    def __post_init__(self) -> None:
        if self.n_initial + self.rounds * self.n_acquire > self.n_pool:
            raise ValueError(f"The pool ({self.n_pool}) is smaller than the budget ({self.n_initial} + {self.rounds} x {self.n_acquire})")


def make_universe(out_dir: Path, config: ActiveLearningConfig) -> pd.DataFrame:
    """Render the synthetic galaxies once (reused when already there); return the catalog with a `role`: test, val or pool."""
    from zoobot_core.synthetic import SyntheticConfig, make_synthetic_catalog

    n = config.n_pool + config.n_test + config.n_val
    path = out_dir / "catalog.csv"
    if path.exists() and len(catalog := pd.read_csv(path)) == n:
        log.info("Reusing the %d synthetic galaxies in %s", n, out_dir)
    else:
        synthetic = SyntheticConfig(n_galaxies=n, image_size=config.image_size, seed=config.universe_seed, unlabelled_fraction=0.0, n_broken=0, tree=config.tree)
        catalog = make_synthetic_catalog(out_dir, synthetic)
    catalog["resized_loc"] = [str((out_dir / f).resolve()) for f in catalog["file_loc"]]
    order = np.random.default_rng(config.universe_seed).permutation(n)
    roles = np.array(["pool"] * n, dtype=object)
    roles[order[: config.n_test]] = "test"
    roles[order[config.n_test : config.n_test + config.n_val]] = "val"
    return catalog.assign(role=roles)


def _write_round_shards(catalog: pd.DataFrame, labelled: set[str], shard_dir: Path, tree: DecisionTree, config: ActiveLearningConfig, seed: int) -> None:
    from zoobot_core.shard_writer import write_shards
    from zoobot_core.shards import ShardSettings

    split = np.where(catalog["role"] == "pool", np.where(catalog["id_str"].isin(labelled), "train", "unlabelled"), catalog["role"])
    settings = ShardSettings(size=config.image_size, label_cols=tuple(tree.label_cols), shard_size=4096, seed=seed)
    write_shards(catalog.assign(split_role=split, labelled=split != "unlabelled"), shard_dir, settings, split_col="split_role")


def score_on_test(predictions: pd.DataFrame, samples: np.ndarray, ids: list[str], test_catalog: pd.DataFrame, train_catalog: pd.DataFrame, tree: DecisionTree) -> dict:
    """Test loss (held-out Dirichlet-Multinomial NLL per galaxy, mixed over samples; over the whole tree and per
    question), vote-fraction MAE and the first question's accuracy on confident galaxies."""
    from zoobot_core.evaluate import confident_confusion, evaluate_predictions, summary

    votes = test_catalog.set_index("id_str").loc[ids, tree.label_cols].to_numpy(np.float64)
    nll = question_nll(votes, samples, tree)
    per_question = {question.name: nll[:, q] for q, question in enumerate(tree.questions)}
    headline = summary(evaluate_predictions(predictions, test_catalog, train_catalog, tree))
    confident, _ = confident_confusion(predictions, test_catalog, tree)
    return {
        "test_loss": float(sum(per_question.values()).mean()),
        "first_question_loss": float(per_question[tree.questions[0].name].mean()),
        "question_losses": {name: float(loss.mean()) for name, loss in per_question.items()},
        "vote_fraction_mae": headline["vote_fraction_mae_vote_weighted"]["model"],
        "confident_accuracy": float(confident["accuracy"].iloc[0]),
    }


def _score_round(round_dir: Path, tree: DecisionTree, config: ActiveLearningConfig, seed: int) -> dict:
    """Test metrics of a round's saved model (the predictions are seeded: the same numbers as when it was trained)."""
    from zoobot_core.dirichlet import samples_array
    from zoobot_core.predict import PredictConfig, predict_shards

    shard_dir = round_dir / "shards"
    predictions, _, samples = predict_shards(round_dir / "model", shard_dir, "test", PredictConfig(n_samples=config.n_samples, seed=seed))
    ids, alpha = samples_array(samples, tree.label_cols)
    return score_on_test(predictions, alpha, ids, pd.read_parquet(shard_dir / "test_catalog.parquet"), pd.read_parquet(shard_dir / "train_catalog.parquet"), tree)


def _train_and_score(shard_dir: Path, round_dir: Path, tree: DecisionTree, config: ActiveLearningConfig, seed: int) -> tuple[dict, pd.DataFrame | None]:
    """Train on the round's shards, score on test; return (metrics, BALD scores of the rest of the pool)."""
    from zoobot_core.dirichlet import samples_array
    from zoobot_core.predict import PredictConfig, predict_shards
    from zoobot_core.train import TrainConfig, train_from_shards

    started = time.perf_counter()
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, patience=config.patience, seed=seed, greyscale=False,
        batchnorm_momentum=0.9, tensorboard=False,
    )
    history = train_from_shards(shard_dir, round_dir / "model", tree, train_config, state_dir=round_dir / "train_state")
    trained = time.perf_counter()
    predict_config = PredictConfig(n_samples=config.n_samples, seed=seed)
    metrics = _score_round(round_dir, tree, config, seed)
    metrics.update(epochs=int(len(history)), train_seconds=trained - started)
    _, _, pool_samples = predict_shards(round_dir / "model", shard_dir, "unlabelled", predict_config)
    pool_ids, pool_alpha = samples_array(pool_samples, tree.label_cols)
    scores = bald_scores(pool_ids, pool_alpha, tree, AcquireConfig(n_volunteers=config.n_volunteers, seed=seed)) if pool_ids else None
    metrics["seconds"] = time.perf_counter() - started
    return metrics, scores


def choose(strategy: str, scores: pd.DataFrame, n: int, rng: np.random.Generator) -> list[str]:
    """The next n galaxies: highest mutual information (bald) or uniformly at random (random)."""
    if strategy == "bald":
        return scores.sort_values(["mutual_information", "id_str"], ascending=[False, True]).head(n)["id_str"].tolist()
    if strategy == "random":
        return sorted(rng.choice(scores["id_str"].to_numpy(), size=min(n, len(scores)), replace=False).tolist())
    raise ValueError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}")


@leaves_process_state
def run_seed(catalog: pd.DataFrame, out_dir: Path, config: ActiveLearningConfig, seed: int, tree: DecisionTree) -> list[dict]:
    """Every round of both strategies for one seed; finished rounds (their record.json) are reused, so a killed run resumes."""
    from zoobot_core.runtime import configure_tensorflow

    configure_tensorflow(seed)
    rng = np.random.default_rng([seed, 0])
    pool = catalog.loc[catalog["role"] == "pool", "id_str"].to_numpy()
    start = set(rng.choice(pool, size=config.n_initial, replace=False).tolist())
    records = []
    shared: tuple[dict, pd.DataFrame | None] | None = None
    for strategy in STRATEGIES:
        labelled = set(start)
        strategy_rng = np.random.default_rng([seed, 1])  # random picks depend on the seed only
        for round_index in range(config.rounds + 1):
            round_dir = out_dir / f"seed{seed}" / (f"round{round_index}" if round_index == 0 else f"{strategy}_round{round_index}")
            record_path = round_dir / "record.json"
            if record_path.exists():
                record = json.loads(record_path.read_text())
                scores = pd.read_parquet(round_dir / "pool_scores.parquet") if (round_dir / "pool_scores.parquet").exists() else None
            elif round_index == 0 and shared is not None:
                record, scores = shared
            else:
                shard_dir = round_dir / "shards"
                _write_round_shards(catalog, labelled, shard_dir, tree, config, seed)
                metrics, scores = _train_and_score(shard_dir, round_dir, tree, config, seed * 1000 + round_index)
                record = {"seed": seed, "round": round_index, "n_labelled": len(labelled), **metrics, "labelled": sorted(labelled)}
                if scores is not None:
                    scores.to_parquet(round_dir / "pool_scores.parquet")
                write_json(record, record_path)
            if round_index == 0:
                shared = (record, scores)
            records.append({column: strategy if column == "strategy" else record[column] for column in COLUMNS})
            log.info("seed %d %s round %d: %d labelled, test loss %.3f, MAE %.4f, confident accuracy %.3f",
                     seed, strategy, round_index, record["n_labelled"], record["test_loss"], record["vote_fraction_mae"], record["confident_accuracy"])
            if round_index < config.rounds:
                labelled |= set(choose(strategy, scores, config.n_acquire, strategy_rng))
    return records


def labels_to_reach(curve: pd.DataFrame, target: float) -> float:
    """Labels a strategy needed to reach test loss `target` (linear between rounds); NaN if it never did."""
    n, loss = curve["n_labelled"].to_numpy(float), curve["loss" if "loss" in curve else "test_loss"].to_numpy(float)
    if loss[0] <= target:
        return float(n[0])
    for i in range(1, len(n)):
        if loss[i] <= target:
            return float(n[i - 1] + (n[i] - n[i - 1]) * (loss[i - 1] - target) / (loss[i - 1] - loss[i]))
    return float("nan")


def summarise(curves: pd.DataFrame) -> dict:
    """Per seed and loss (whole tree, first question): the labels BALD needed to reach random's final loss,
    against the labels random needed; and the curves' mean and spread over seeds."""
    per_seed = []
    for metric in ("test_loss", "first_question_loss"):
        for seed, part in curves.groupby("seed"):
            random_curve = part[part["strategy"] == "random"].sort_values("n_labelled").rename(columns={metric: "loss"})
            bald_curve = part[part["strategy"] == "bald"].sort_values("n_labelled").rename(columns={metric: "loss"})
            target = float(random_curve["loss"].iloc[-1])
            needed = labels_to_reach(bald_curve, target)
            budget = labels_to_reach(random_curve, target)
            per_seed.append({"metric": metric, "seed": int(seed), "target_loss": target, "random_labels": budget, "bald_labels": needed,
                             "label_saving": (1 - needed / budget) if np.isfinite(needed) else None})
    metrics = ["test_loss", "first_question_loss", "vote_fraction_mae", "confident_accuracy"]
    mean = curves.groupby(["strategy", "n_labelled"])[metrics].agg(["mean", "std"])
    mean.columns = [f"{metric}_{stat}" for metric, stat in mean.columns]
    return {"per_seed": per_seed, "mean_curves": mean.reset_index().to_dict(orient="records")}


def composition(catalog: pd.DataFrame, rounds_dir: Path, config: ActiveLearningConfig, tree: DecisionTree) -> pd.DataFrame:
    """What each strategy chose: the share of each true answer to the first question among the galaxies it
    acquired (all rounds, all seeds), beside the pool's share."""
    question = tree.questions[0].name
    truth = catalog.set_index("id_str")[f"true_{question}"]
    pool = catalog.loc[catalog["role"] == "pool", "id_str"]
    rows = [{"chosen_by": "pool", **truth.loc[pool].value_counts(normalize=True).to_dict(), "n": len(pool)}]
    for strategy in STRATEGIES:
        chosen = []
        for seed in config.seeds:
            seed_dir = rounds_dir / f"seed{seed}"
            start_path, last_path = seed_dir / "round0" / "record.json", seed_dir / f"{strategy}_round{config.rounds}" / "record.json"
            if start_path.exists() and last_path.exists():
                start = set(json.loads(start_path.read_text())["labelled"])
                chosen += [i for i in json.loads(last_path.read_text())["labelled"] if i not in start]
        if chosen:
            rows.append({"chosen_by": strategy, **truth.loc[chosen].value_counts(normalize=True).to_dict(), "n": len(chosen)})
    return pd.DataFrame(rows).fillna(0.0)


def run_experiment(out_dir: Path | str, config: ActiveLearningConfig) -> pd.DataFrame:
    """The whole experiment: learning curves (CSV), summary (JSON) and plot (PNG) in out_dir."""
    from zoobot_core.figures import plot_learning_curves
    from zoobot_core.io import atomic_write_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(asdict(config), out_dir / "config.json")
    tree = get_tree(config.tree)
    catalog = make_universe(out_dir / "universe", config)
    records = []
    for seed in config.seeds:
        records += run_seed(catalog, out_dir / "rounds", config, seed, tree)
        curves = pd.DataFrame(records)
        atomic_write_table(curves, out_dir / "learning_curves.csv")
        write_json(summarise(curves), out_dir / "summary.json")
        plot_learning_curves(curves, out_dir / "learning_curves.png")
        atomic_write_table(composition(catalog, out_dir / "rounds", config, tree), out_dir / "composition.csv")
    return pd.DataFrame(records)

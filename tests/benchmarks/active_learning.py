"""BALD vs random acquisition: learning curves on the synthetic universe (make active-learning; docs/results.md).

Trains the pipeline's model from scratch every round (21 trainings), so the default takes about 55 min on 2 CPU cores.
Finished rounds are kept under --out: a killed run picks up where it stopped.
"""

import argparse
import logging
import time
from pathlib import Path

from zoobot_core.active_learning import ActiveLearningConfig, run_experiment, summarise
from zoobot_core.io import setup_logging

log = logging.getLogger("active_learning")


def main() -> None:
    defaults = ActiveLearningConfig()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/active_learning"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    for name in ("n_pool", "n_test", "n_val", "n_initial", "n_acquire", "rounds", "epochs", "patience", "image_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = parser.parse_args()
    setup_logging()
    config = ActiveLearningConfig(
        seeds=tuple(args.seeds), **{k: getattr(args, k) for k in ("n_pool", "n_test", "n_val", "n_initial", "n_acquire", "rounds", "epochs", "patience", "image_size")},
    )
    started = time.perf_counter()
    curves = run_experiment(args.out, config)
    for row in summarise(curves)["per_seed"]:
        if row["label_saving"] is None:
            outcome = "never reached it"
        else:
            outcome = f"{row['bald_labels']:.0f} ({abs(100 * row['label_saving']):.0f}% {'fewer' if row['label_saving'] >= 0 else 'more'})"
        log.info("%s, seed %d: random reached %.3f with %.0f labels; BALD needed %s", row["metric"], row["seed"], row["target_loss"], row["random_labels"], outcome)
    log.info("Learning curves in %s (%.1f min)", args.out / "learning_curves.png", (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()

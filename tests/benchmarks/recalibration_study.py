"""Recalibration of finished runs: each map fitted on validation and scored on test, and BALD's top picks raw vs recalibrated
(make recalibration-study RUNS="results/demo results/demo_seed7"; docs/results.md). Seconds per run: no training."""

import argparse
import logging
from pathlib import Path

from zoobot_core.acquisition import AcquireConfig
from zoobot_core.io import setup_logging
from zoobot_core.recalibration_study import recalibration_study

log = logging.getLogger("recalibration_study")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders (results/<run_name>)")
    parser.add_argument("--out", type=Path, default=Path("results/recalibration_study"))
    parser.add_argument("--split", default="unlabelled", help="split BALD ranks (the acquire rule's default)")
    parser.add_argument("--top-n", type=int, default=100)
    args = parser.parse_args()
    setup_logging()
    for run in args.runs:
        log.info("Run %s", run)
        recalibration_study(run, args.out / run.name, None, AcquireConfig(), args.split, args.top_n)  # None: the run's own calibration settings
    log.info("Tables in %s", args.out)


if __name__ == "__main__":
    main()

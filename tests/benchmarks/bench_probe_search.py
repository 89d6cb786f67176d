"""The linear probe's regularisation search: the whole grid (GridSearchCV's way) against the walk that stops two grid
points past the best (baselines.linear_search), side by side on the same features.

Run: `make bench-probe` (or `.venv/bin/python tests/benchmarks/bench_probe_search.py --n 2000 --n 12000`). For each
--n: n distinct galaxies (bench_finetune_scale.distinct_catalog: the 104 real cutouts cropped, mirrored and noised),
resized to --size px, their rotation-averaged pooled features from a base this pipeline trained (--base train, as
bench_finetune_scale; or none, or a .keras path), labels the source cutout's parity with a fifth flipped; then the
search on two thirds of them with --inner-folds stratified folds, each way --repeats times in alternation. Recorded:
seconds (median), grid points fitted, the value chosen, and whether both ways chose the same and score the held-out
third the same. The search alone: the whole command's effect is in bench_finetune_scale (`--against` a checkout
before the change).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune_scale import SAMPLE, distinct_catalog, noisy_labels, train_base  # noqa: E402

log = logging.getLogger("bench_probe_search")


def features(n: int, size: int, base: str, workdir: Path, cores: int) -> tuple[np.ndarray, np.ndarray]:
    """(rotation-averaged pooled features, labels) of n distinct galaxies at `size` px from `base`."""
    from zoobot_core.bases import resolve_base
    from zoobot_core.finetune import FinetuneConfig, _network, source_features
    from zoobot_core.image_source import ArrayImages
    from zoobot_core.images import ResizeConfig, load_resized

    catalog = distinct_catalog(workdir, SAMPLE, n, cores)
    images = np.stack([np.asarray(load_resized(f, ResizeConfig(size=size))) for f in catalog["file_loc"]])
    config = FinetuneConfig(resize_size=max(size, 32))
    network = _network(resolve_base(base), size, 3, config)
    return source_features(network, ArrayImages(images), 3, 64), noisy_labels(n, sources=catalog["source"].to_numpy())


def main(argv: list[str] | None = None) -> dict:
    from zoobot_core.baselines import C_GRID, class_scores, linear_search, splitter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="galaxies (repeatable; default 2000 and 12000)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--base", default="train", help="'train' (a pipeline base trained here, once), 'none' or a .keras path")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_probe_search_"))
    workdir.mkdir(parents=True, exist_ok=True)
    base = str(train_base(workdir / "base", args.size, args.cores)) if args.base == "train" else args.base
    rows = []
    for n in args.n or [2000, 12000]:
        x, y = features(n, args.size, base, workdir, args.cores)
        train, held = np.arange(n)[: 2 * n // 3], np.arange(n)[2 * n // 3 :]
        cv = splitter(y[train], "binary", args.inner_folds, seed=0)
        timings: dict[str, list[float]] = {"whole grid": [], "stopped": []}
        searches = {}
        for _ in range(args.repeats):
            for name, patience in (("whole grid", len(C_GRID)), ("stopped", None)):
                started = time.perf_counter()
                searches[name] = linear_search("binary", cv, x[train], y[train], **({} if patience is None else {"patience": patience}))
                timings[name].append(time.perf_counter() - started)
                log.info("n=%d %s: %.1f s, %d grid points", n, name, timings[name][-1], len(searches[name].scores))
        whole, stopped = searches["whole grid"], searches["stopped"]
        same_scores = np.array_equal(class_scores(whole.best_estimator_, x[held], "binary", 2), class_scores(stopped.best_estimator_, x[held], "binary", 2))
        row = {"n": n, "features": int(x.shape[1]), "whole_s": statistics.median(timings["whole grid"]), "stopped_s": statistics.median(timings["stopped"]),
               "whole_points": len(whole.scores), "stopped_points": len(stopped.scores), "chosen": float(next(iter(whole.best_params_.values()))),
               "same_choice": whole.best_params_ == stopped.best_params_, "same_held_out_scores": bool(same_scores)}
        row["speedup"] = row["whole_s"] / row["stopped_s"]
        rows.append(row)
    lines = ["| galaxies (x features) | whole grid | stopped walk | speed-up | C chosen | same choice and held-out scores |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} (x {r['features']:,}) | {r['whole_s']:.1f} s, {r['whole_points']} points | {r['stopped_s']:.1f} s, {r['stopped_points']} points | "
                     f"{r['speedup']:.2f}x | {r['chosen']:g} | {'yes' if r['same_choice'] and r['same_held_out_scores'] else 'NO'} |")
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "table": "\n".join(lines)}
    print(report["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

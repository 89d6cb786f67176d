"""Peak memory of the uncertainty rules' work (calibration, acquisition, the HDF5 file) streamed by row group, beside
the whole-table way (before issue 25: the samples file read at once, `samples_array` to float64), at growing sizes.

Run: `make bench-uncertainty` (or `.venv/bin/python tests/benchmarks/bench_uncertainty_memory.py [--n 10000 --n 40000]
[--views 1 --views 8] [--out results/bench_uncertainty_memory.json]`); `--tiny` is the suite's size.

For each size (galaxies x views), a prediction_samples Parquet file as predict writes it (`predict.sample_table`: 5
MC-dropout samples per view, the GZ DECaLS DR5 tree's 34 answers, row groups of 4,096 galaxies, concentrations like
the model's: per question a Dirichlet mean scaled by a precision in 3-80, each sample scattered by exp(0.15 x normal),
kept in the head's (1, 101)), and a test and train catalog of votes. Each task runs in its own fresh Python process;
recorded: its peak resident memory (Linux's VmHWM, exact, imports included; not ru_maxrss, which
carries the parent's resident size at the fork) and wall seconds. Streamed and
whole outputs are compared (equal, or the script fails). Memory "flat" means the streamed peak does not grow with the
galaxies or the views while the whole-table peak does.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench_uncertainty_memory")
TREE = "gz_decals_dr5"
SAMPLES_PER_VIEW = 5

# one task, in a fresh process: argv = task, folder; prints {"peak_mb": ..., "s": ...}
TASK = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np, pandas as pd
from zoobot_core.schemas import get_tree
task, folder = sys.argv[1], Path(sys.argv[2])
tree = get_tree("gz_decals_dr5")
samples = folder / "samples.parquet"
started = time.perf_counter()
if task.startswith("calibration"):
    from zoobot_core.calibration import CalibrationConfig, calibrate, streamed_calibration
    if task == "calibration_streamed":
        table = streamed_calibration(samples, folder, tree, CalibrationConfig())[0]
    else:
        from zoobot_core.dirichlet import samples_array
        ids, alpha = samples_array(pd.read_parquet(samples), tree.label_cols)
        test = pd.read_parquet(folder / "test_catalog.parquet").set_index("id_str").loc[ids]
        train = pd.read_parquet(folder / "train_catalog.parquet", columns=tree.label_cols).to_numpy(np.float64)
        table = calibrate(alpha, test[tree.label_cols].to_numpy(np.float64), train, tree, CalibrationConfig())[0]
    table.to_parquet(folder / f"{task}.parquet")
elif task.startswith("acquisition"):
    from zoobot_core.acquisition import AcquireConfig, bald_scores, streamed_bald_scores
    if task == "acquisition_streamed":
        scores = streamed_bald_scores(samples, tree, AcquireConfig())[0]
    else:
        from zoobot_core.dirichlet import samples_array
        scores = bald_scores(*samples_array(pd.read_parquet(samples), tree.label_cols), tree, AcquireConfig())
    scores.to_parquet(folder / f"{task}.parquet")
else:
    from zoobot_core.hdf5 import samples_file_to_hdf5, samples_to_array, write_predictions_hdf5
    if task == "hdf5_streamed":
        samples_file_to_hdf5(samples, tree.label_cols, folder / f"{task}.h5")
    else:
        concentrations, ids = samples_to_array(pd.read_parquet(samples), tree.label_cols)
        write_predictions_hdf5(concentrations, ids, tree.label_cols, folder / f"{task}.h5")
seconds = time.perf_counter() - started
with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss carries the parent's size at the fork)
    peak_mb = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps({"peak_mb": peak_mb, "s": seconds}))
'''
TASKS = ("calibration", "acquisition", "hdf5")


def write_inputs(folder: Path, n: int, views: int, seed: int = 0) -> None:
    """A samples file of n galaxies x views x SAMPLES_PER_VIEW samples, and test / train catalogs of votes."""
    from zoobot_core.predict import sample_table
    from zoobot_core.schemas import get_tree

    tree = get_tree(TREE)
    rng = np.random.default_rng(seed)
    ids = [f"g{i:07d}" for i in range(n)]
    blocks, fractions = [], []
    for question in tree.questions:
        k = len(question.answers)
        mean = rng.dirichlet(np.full(k, 0.7), n)
        fractions.append(mean)
        blocks.append(mean[:, None, :] * rng.uniform(3, 80, (n, 1, 1)) * np.exp(0.15 * rng.standard_normal((n, views * SAMPLES_PER_VIEW, k))))
    alpha = np.clip(np.concatenate(blocks, axis=-1), 1.0, 101.0).astype(np.float32)
    sample_table(ids, alpha, tree.label_cols, n_views=views).to_parquet(folder / "samples.parquet", row_group_size=4096 * views * SAMPLES_PER_VIEW)
    del alpha
    votes = np.concatenate([rng.multinomial(40, mean) for mean in fractions], axis=1)  # 40 volunteers per question
    test = pd.DataFrame(votes, columns=tree.label_cols)
    test.insert(0, "id_str", ids)
    test.to_parquet(folder / "test_catalog.parquet")
    test.drop(columns="id_str").iloc[: max(1, n // 4)].to_parquet(folder / "train_catalog.parquet")


def run_task(task: str, folder: Path) -> dict:
    """One task in a fresh Python process: its peak resident memory and seconds."""
    result = subprocess.run([sys.executable, "-c", TASK, task, str(folder)], capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise RuntimeError(f"{task} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_outputs(folder: Path, task: str) -> bool:
    """Whether the streamed and the whole-table task wrote the same numbers."""
    if task == "hdf5":
        import h5py

        with h5py.File(folder / "hdf5_streamed.h5") as a, h5py.File(folder / "hdf5_whole.h5") as b:
            return bool(np.array_equal(a["predictions"][:], b["predictions"][:]) and list(a["id_str"][:]) == list(b["id_str"][:]))
    a, b = (pd.read_parquet(folder / f"{task}_{how}.parquet") for how in ("streamed", "whole"))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="galaxies (repeatable; default 10,000 and 40,000)")
    parser.add_argument("--views", type=int, action="append", help="test-time views (repeatable; default 1 and 8)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of " + ", ".join(TASKS))
    parser.add_argument("--tiny", action="store_true", help="the suite's size: 500 galaxies, 1 view")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = args.n or ([500] if args.tiny else [10000, 40000])
    views = args.views or ([1] if args.tiny else [1, 8])
    tasks = [t for t in args.tasks.split(",") if t]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_uncertainty_"))
    rows = []
    for v in views:
        for n in sizes:
            folder = workdir / f"n{n}_v{v}"
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            write_inputs(folder, n, v)
            log.info("%d galaxies x %d views: inputs in %.1f s (%.0f MB of samples)", n, v, time.perf_counter() - started,
                     (folder / "samples.parquet").stat().st_size / 1e6)
            for task in tasks:
                row = {"n": n, "views": v, "samples": v * SAMPLES_PER_VIEW, "task": task}
                for how in ("streamed", "whole"):
                    figures = run_task(f"{task}_{how}", folder)
                    row[f"{how}_peak_mb"], row[f"{how}_s"] = round(figures["peak_mb"], 1), round(figures["s"], 2)
                row["same"] = same_outputs(folder, task)
                log.info("%s", row)
                rows.append(row)
    table = ["| task | galaxies x samples | streamed: peak MB, s | whole table: peak MB, s | same numbers |", "|---|---|---|---|---|"]
    table += [f"| {r['task']} | {r['n']:,} x {r['samples']} | {r['streamed_peak_mb']:.0f}, {r['streamed_s']:.1f} | "
              f"{r['whole_peak_mb']:.0f}, {r['whole_s']:.1f} | {'yes' if r['same'] else 'NO'} |" for r in rows]
    report = {"rows": rows, "table": "\n".join(table)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.out)
    print(report["table"])
    return report


if __name__ == "__main__":
    main()

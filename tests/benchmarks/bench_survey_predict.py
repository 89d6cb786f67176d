"""Survey prediction throughput: the pipeline's path against what a user would write by hand, same model, same images.

Run: `make bench-survey` (or `.venv/bin/python tests/benchmarks/bench_survey_predict.py --n 2000 --repeats 3`).

A finetuned model is made once (finetune() on the 104 real rings at --size px from random weights: its quality is
beside the point, its cost is not). The survey is bench_chain's catalog: the real cutouts repeated as hard links,
each row its own id. Then, --repeats times in alternation, each side in a fresh process (imports included):

- ours: the survey's chunks written as shards (chunk_shards.write_chunk_shards_file, every core, images resized
  once, straight from the files) then predict_survey_files (rotation-averaged features, the head with dropout off and
  --samples MC-dropout samples, streamed per shard into Parquet);
- by hand: one process that decodes and resizes each file (images.load_resized, the same pixels) and calls
  model.predict in batches of --batch-size: one prediction per galaxy, no rotations, no samples.

Galaxies per second (whole process wall time) are reported as medians with the ratio; ours does 4 rotations and
MC-dropout on top, so equal work would be about 4x the by-hand network time.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_chain import SAMPLE, make_catalog

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench_survey_predict")

OURS = """
import sys
from pathlib import Path
import pandas as pd
from zoobot_core.catalog import CatalogConfig, validate_catalog
from zoobot_core.chunk_shards import write_chunk_shards
from zoobot_core.finetuned import predict_survey_files
from zoobot_core.images import ResizeConfig
from zoobot_core.shards import ShardSettings
catalog, model_dir, out, size, batch, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
validated, _ = validate_catalog(catalog, CatalogConfig(chunk_size=max(1, 10**9), max_quarantine_fraction=0.0))
dirs = []
for chunk in sorted(validated["chunk"].unique()):
    folder = out / f"chunk_{chunk}"
    write_chunk_shards(validated, chunk, folder, ShardSettings(size=size, shard_size=4096, image_encoding="raw"), ResizeConfig(size=size), workers, False)
    dirs.append(folder)
print(predict_survey_files(model_dir, dirs, out / "predictions.parquet", batch_size=batch, seed=0, threads=workers))
"""

BY_HAND = """
import sys
import numpy as np, pandas as pd
from zoobot_core.images import ResizeConfig, load_resized
from zoobot_core.runtime import load_keras_model
catalog, model_path, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = load_keras_model(model_path)
files = pd.read_csv(catalog)["file_loc"].tolist()
out = []
for start in range(0, len(files), batch):
    images = np.stack([np.asarray(load_resized(f, ResizeConfig(size=size)), np.float32) / 255.0 for f in files[start:start + batch]])
    out.append(model.predict(images, batch_size=batch, verbose=0))
print(len(np.concatenate(out)))
"""


def make_model(workdir: Path, size: int) -> Path:
    """A finetuned model (finetune's output folder) from random weights on the real rings at `size` px."""
    import numpy as np

    from zoobot_core.bases import resolve_base
    from zoobot_core.catalog import CatalogConfig, validate_catalog
    from zoobot_core.finetune import FinetuneConfig, finetune
    from zoobot_core.images import ResizeConfig, load_resized

    out = workdir / "model"
    if (out / "model.keras").is_file():
        return out
    catalog = SAMPLE.parent / "catalog.csv"
    config = CatalogConfig(id_column="iauname", file_column="local_png_loc", label_cols=("ring",), label_kind="classes", allow_unlabelled=False)
    ready, _ = validate_catalog(catalog, config)
    images = np.stack([np.asarray(load_resized(f, ResizeConfig(size=size))) for f in ready["file_loc"]])
    finetune(images, ready["id_str"], ready["ring"], resolve_base("none"), out, FinetuneConfig(folds=2, inner_folds=2, seed=0))
    return out


def timed(command: list[str]) -> float:
    """Wall seconds of a whole process."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{command[:2]} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="survey galaxies")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_survey_"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = make_model(workdir, args.size)
    catalog = make_catalog(workdir, SAMPLE, args.n, "png", [])
    seconds: dict[str, list[float]] = {"ours": [], "by hand": []}
    for repeat in range(args.repeats):
        out = workdir / f"ours_{repeat}"
        out.mkdir(exist_ok=True)
        seconds["ours"].append(timed([sys.executable, "-c", OURS, str(catalog), str(model), str(out), str(args.size), str(args.batch_size), str(args.workers)]))
        seconds["by hand"].append(timed([sys.executable, "-c", BY_HAND, str(catalog), str(model / "model.keras"), str(args.size), str(args.batch_size)]))
        log.info("repeat %d: ours %.1f s, by hand %.1f s", repeat + 1, seconds["ours"][-1], seconds["by hand"][-1])
    rates = {name: args.n / statistics.median(s) for name, s in seconds.items()}
    report = {"n": args.n, "size": args.size, "workers": args.workers, "seconds": seconds, "galaxies_per_s": rates,
              "ratio": rates["ours"] / rates["by hand"]}
    report["table"] = "\n".join([
        "| side | what it computes | median s (runs) | galaxies/s |", "|---|---|---|---|",
        f"| ours | shards + 4 rotations + dropout-off head + MC samples, streamed | {statistics.median(seconds['ours']):.1f} "
        f"({', '.join(f'{s:.1f}' for s in seconds['ours'])}) | {rates['ours']:.1f} |",
        f"| by hand | decode + resize + model.predict | {statistics.median(seconds['by hand']):.1f} "
        f"({', '.join(f'{s:.1f}' for s in seconds['by hand'])}) | {rates['by hand']:.1f} |",
    ])
    print(report["table"])
    print(f"ratio ours / by hand: {report['ratio']:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

"""Zoobot 2's encoders in Keras beside timm, in the same run: agreement of the pooled features at full size
and feature-extraction speed (images/s, peak memory) at 224 px.

Each measurement runs in a process of its own (Keras on TensorFlow in this venv; timm in the torch venv of
`make timm-env`, or $ZOOBOT_TIMM_PYTHON), alternating Keras and timm `--repeats` times, so peak memory is
the process's own and the medians compare like with like. Without torch and timm, only the Keras side runs.

  python tests/benchmarks/bench_encoders.py                       # convnext_nano, efficientnet_b0 at 224 px
  python tests/benchmarks/bench_encoders.py --tiny                # the suite's version: fixtures, 64 px, seconds
  python tests/benchmarks/bench_encoders.py --agreement convnext_pico convnext_large ...

Figures: docs/encoders.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "encoders"
log = logging.getLogger("bench_encoders")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM): unlike ru_maxrss, which Linux carries across exec from the forking
    parent, it is this program's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def timm_python() -> str | None:
    """A Python with torch and timm ($ZOOBOT_TIMM_PYTHON, else .venv-timm's), or None."""
    candidate = os.environ.get("ZOOBOT_TIMM_PYTHON") or str(REPO / ".venv-timm" / "bin" / "python")
    if not Path(candidate).is_file() or subprocess.run([candidate, "-c", "import torch, timm"], capture_output=True).returncode:
        return None
    return candidate


def agreement(python: str, arch: str, folder: Path, greyscale: bool = False, n: int = 2, size: int = 224) -> dict:
    """timm saves a randomised full-size `arch` into `folder` (timm_reference.py make); the Keras port reads that
    folder: the errors of its pooled features against timm's (float64)."""
    import numpy as np

    from zoobot_core import encoders

    command = [python, str(REPO / "tests" / "benchmarks" / "timm_reference.py"), "make", "--arch", arch, "--out", str(folder), "--n", str(n), "--size", str(size)]
    made = subprocess.run(command + (["--greyscale"] if greyscale else []), capture_output=True, text=True, timeout=1200)
    if made.returncode:
        raise RuntimeError(f"timm_reference.py make {arch} failed: {made.stderr[-3000:]}")
    io = np.load(folder / "io.npz")
    model = encoders.load_encoder(folder, io["images"].shape[1:])
    features = np.asarray(model.predict(io["images"], verbose=0, batch_size=1), np.float64)
    reference = io["features"]
    error = np.abs(features - reference)
    return {
        "arch": arch + (" (greyscale)" if greyscale else ""), "params": json.loads(made.stdout.strip().splitlines()[-1])["params"],
        "features": int(reference.shape[1]), "max_abs_error": float(error.max()), "max_abs_feature": float(np.abs(reference).max()),
        "max_error_relative_to_largest_feature": float(error.max() / np.abs(reference).max()),
        "median_relative_error": float(np.median(error / np.maximum(np.abs(reference), 1e-12))),
        "features_shape_ok": features.shape == reference.shape,
    }


def keras_speed(folder: str, size: int, n: int, batch: int, threads: int) -> dict:
    """In this process: load the encoder, one warm-up batch, then n images a batch at a time; images/s and peak memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from zoobot_core.runtime import configure_tensorflow

    configure_tensorflow(0, True, threads)
    from zoobot_core.encoders import load_encoder

    started = time.perf_counter()
    model = load_encoder(folder, (size, size, None))
    load_s = time.perf_counter() - started
    images = np.random.default_rng(0).uniform(0, 1, (n, size, size, model.input_shape[-1])).astype(np.float32)
    model.predict_on_batch(images[:batch])
    started = time.perf_counter()
    for start in range(0, n, batch):
        model.predict_on_batch(images[start : start + batch])
    seconds = time.perf_counter() - started
    return {"images_per_s": n / seconds, "load_s": load_s, "peak_mb": peak_rss_mb()}


def _child(args: list[str]) -> dict:
    run = subprocess.run(args, capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(REPO)})
    if run.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def speed_table(folders: dict[str, str], python: str | None, size: int, n: int, batch: int, threads: int, repeats: int) -> list[dict]:
    """Per architecture: Keras' and timm's images/s and peak memory, medians of `repeats` alternating runs."""
    rows = []
    for arch, folder in folders.items():
        runs: dict[str, list[dict]] = {"keras": [], "timm": []}
        for _ in range(repeats):
            runs["keras"].append(_child([sys.executable, __file__, "--keras-speed", folder, "--size", str(size), "--n", str(n), "--batch", str(batch), "--threads", str(threads)]))
            if python:
                grey = ["--greyscale"] if "greyscale" in arch else []
                runs["timm"].append(_child([python, str(REPO / "tests/benchmarks/timm_reference.py"), "speed", "--arch", arch.replace("greyscale-", ""),
                                            "--size", str(size), "--n", str(n), "--batch", str(batch), "--threads", str(threads), *grey]))
        row = {"arch": arch, "size": size, "n": n, "batch": batch, "threads": threads}
        for side, results in runs.items():
            if results:
                row[f"{side}_images_per_s"] = statistics.median(r["images_per_s"] for r in results)
                row[f"{side}_images_per_s_all"] = [round(r["images_per_s"], 2) for r in results]
                row[f"{side}_peak_mb"] = statistics.median(r["peak_mb"] for r in results)
        if runs["timm"]:
            row["keras_over_timm"] = row["keras_images_per_s"] / row["timm_images_per_s"]
        rows.append(row)
        log.info("%s", json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["convnext_nano", "efficientnet_b0"])
    parser.add_argument("--agreement", nargs="*", default=None, help="architectures to compare with timm at full size (default: --arch)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the suite's version: the timm-made fixtures at 64 px, 8 images, one repeat")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keras-speed", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_speed:
        print(json.dumps(keras_speed(args.keras_speed, args.size, args.n, args.batch, args.threads)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    python = timm_python()
    if python is None:
        log.info("torch and timm not found (make timm-env, or ZOOBOT_TIMM_PYTHON): Keras only, no agreement check")
    result: dict = {"timm_python": python}
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            folders = {name: str(FIXTURES / name) for name in ("convnext_nano", "efficientnet_b0")}
            args.size, args.n, args.batch, args.repeats = 64, 8, 4, 1
            python = None  # the fixtures are not timm's full-size architectures
        else:
            if python is None:
                raise SystemExit("The full-size benchmark needs timm to make the networks: make timm-env (or use --tiny)")
            folders, result["agreement"] = {}, []
            for arch in dict.fromkeys([*(args.agreement if args.agreement is not None else []), *args.arch]):
                folder = Path(tmp) / arch
                result["agreement"].append(agreement(python, arch.replace("greyscale-", ""), folder, greyscale=arch.startswith("greyscale-")))
                log.info("%s", json.dumps(result["agreement"][-1]))
                if arch in args.arch:
                    folders[arch] = str(folder)
        result["speed"] = speed_table(folders, python, args.size, args.n, args.batch, args.threads, args.repeats)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

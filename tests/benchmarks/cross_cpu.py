"""Cross-CPU reproducibility: are CPU-trained weights bit-identical across instruction sets and thread counts?

Run: `.venv/bin/python tests/benchmarks/cross_cpu.py [--shards results/demo/shards] [--out results/cross_cpu] [--epochs 3]`.
Each variant trains the same config and seed in a fresh subprocess, because oneDNN and TensorFlow read
their environment variables once, at import:

- ONEDNN_MAX_CPU_ISA=AVX2 / AVX512_CORE makes oneDNN dispatch as on an older CPU (emulates other hardware);
- TF_ENABLE_ONEDNN_OPTS=0 swaps TensorFlow's oneDNN kernels for its Eigen ones.

Writes cross_cpu.csv and cross_cpu.md in --out: per variant its env, threads, median seconds per epoch
(epochs after the first, which also traces the graph), final val_loss, and whether model.keras is bitwise
identical to variant a (default env, 2 threads) or e (oneDNN off, 2 threads), with max |weight difference|.
A short ONEDNN_VERBOSE=1 probe per environment records which ISA and kernels oneDNN dispatched to.

Every run imports a copy of zoobot_core (and resources/) taken into --out/code when the script starts, so edits to
the working tree during the runs cannot mix code versions; the code column gives each run's source hash.
Finished runs in --out are reused (delete a variant's folder to rerun it).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("cross_cpu")

NO_ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "0"}


@dataclass(frozen=True)
class Variant:
    """One training run: a name, the environment variables it adds, and TensorFlow's intra-op threads."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int = 2
    note: str = ""

    @property
    def env_text(self) -> str:
        """The added environment as KEY=VALUE words, or 'default'."""
        return " ".join(f"{k}={v}" for k, v in self.env.items()) or "default"


# a and e are the references; b and e2 repeat them later (same-machine determinism and a second timing)
VARIANTS = [
    Variant("a", {}, 2, "default env"),
    Variant("e", NO_ONEDNN, 2, "oneDNN off (Eigen kernels)"),
    Variant("c", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 2, "oneDNN capped at AVX2"),
    Variant("d", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, 2, "oneDNN capped at AVX512_CORE"),
    Variant("f", {**NO_ONEDNN, "ONEDNN_MAX_CPU_ISA": "AVX2"}, 2, "oneDNN off, capped at AVX2"),
    Variant("g", NO_ONEDNN, 1, "oneDNN off, 1 thread"),
    Variant("h", {}, 1, "default env, 1 thread"),
    Variant("i", {}, 4, "default env, 4 threads (rule train_model's threads: 4 under snakemake --cores 4+)"),
    Variant("b", {}, 2, "default env again"),
    Variant("c2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 2, "oneDNN capped at AVX2 again"),
    Variant("e2", NO_ONEDNN, 2, "oneDNN off again"),
]

_PROBE = """
import numpy as np, keras
from zoobot_core.model import get_model
model = get_model(34, 64, 48, 48, 3, seed=0, batchnorm_momentum=0.9)
model.compile(optimizer="adam", loss="mse")
x = np.random.default_rng(0).random((8, 64, 64, 3), dtype=np.float32)
model.train_on_batch(x, np.ones((8, 34), np.float32))
"""


def freeze_code(out_root: Path) -> Path:
    """Copy zoobot_core and resources/ into out_root/code once (kept for reruns); the folder to put first on PYTHONPATH."""
    code = out_root / "code"
    if not (code / "zoobot_core").exists():
        package = Path(importlib.util.find_spec("zoobot_core").submodule_search_locations[0])
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(package, code / "zoobot_core", ignore=ignore)
        if (package.parent / "resources").exists():
            shutil.copytree(package.parent / "resources", code / "resources", ignore=ignore)
    return code


def source_hash(package_dir: Path) -> str:
    """SHA-256 (first 12 hex digits) of a package's .py files, by relative path and content."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def child_env(variant: Variant, code: Path, verbose: bool = False) -> dict[str, str]:
    """The current environment without any oneDNN/TF switches of its own, plus the variant's; the frozen code first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "ONEDNN_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update({"TF_CPP_MIN_LOG_LEVEL": "0" if verbose else "2", **variant.env})
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    return env


def probe_dispatch(variant: Variant, code: Path) -> dict[str, str]:
    """One train step of the model with ONEDNN_VERBOSE=1: oneDNN's ISA line and the kernels its convolutions and gemms ran."""
    env = child_env(variant, code, verbose=True)
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=code, capture_output=True, text=True, timeout=600)
    lines = (done.stdout + done.stderr).splitlines()
    isa = next((line for line in lines if ",info,cpu,isa:" in line), "no oneDNN ISA line")
    kernels: dict[str, int] = {}
    for line in lines:
        parts = line.split(",")
        if line.startswith("onednn_verbose") and len(parts) > 6 and parts[3] == "exec" and parts[5] in ("convolution", "gemm_api", "matmul", "inner_product"):
            key = f"{parts[5]}:{parts[6] or '-'}"
            kernels[key] = kernels.get(key, 0) + 1
    tf_line = next((line.split("] ", 1)[-1] for line in lines if "oneDNN custom operations" in line), "")
    return {"isa": isa, "kernels": " ".join(f"{k} x{n}" for k, n in sorted(kernels.items())), "tf_line": tf_line}


def train_worker(shards: Path, out: Path, epochs: int, threads: int) -> None:
    """Train once in this process (a subprocess of main) and write the epoch end times and code hash to out/timing.json."""
    import zoobot_core
    from zoobot_core.schemas import get_tree
    from zoobot_core.train import TrainConfig, train_from_shards

    marks: list[tuple[str, float]] = []

    class Marker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith(("Training on", "epoch ")):
                marks.append((message.split(":")[0], time.perf_counter()))

    train_log = logging.getLogger("zoobot_core.train")
    train_log.setLevel(logging.INFO)
    train_log.addHandler(Marker())
    from zoobot_core import shards as shard_io

    crop = round(shard_io.read_metadata(shards)["size"] * 0.75)
    config = TrainConfig(
        epochs=epochs, batch_size=32, patience=99, seed=42, greyscale=False, batchnorm_momentum=0.9, deterministic=True, tensorboard=False,
        resize_size=None if crop >= 32 else 32,  # EfficientNetB0's smallest input: tiny test shards are resized up to it
    )
    start = time.perf_counter()
    train_from_shards(shards, out, get_tree("gz_decals_dr5"), config, state_dir=out.with_name(out.name + "_state"), threads=threads)
    times = [t for _, t in marks]
    package = Path(zoobot_core.__file__).parent
    timing = {"epoch_seconds": list(np.diff(times)), "total_seconds": time.perf_counter() - start, "code": source_hash(package), "code_dir": str(package)}
    (out / "timing.json").write_text(json.dumps(timing))


def run_variant(variant: Variant, shards: Path, out_root: Path, epochs: int, code: Path) -> Path:
    """Train the variant in a fresh subprocess (its env set before TensorFlow is imported); its model folder."""
    out = out_root / variant.name
    if (out / "timing.json").exists():
        log.info("%s: reusing the finished run in %s", variant.name, out)
        return out
    args = [sys.executable, __file__, "--worker", "--shards", str(shards), "--out", str(out), "--epochs", str(epochs), "--threads", str(variant.threads)]
    log.info("%s: training (%s, %d threads)", variant.name, variant.env_text, variant.threads)
    done = subprocess.run(args, env=child_env(variant, code), cwd=code, capture_output=True, text=True)
    (out_root / f"{variant.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"variant {variant.name} failed; see {out_root / f'{variant.name}.log'}")
    return out


def load_weights(model_dir: Path) -> list[np.ndarray]:
    """Every weight array of model_dir/model.keras (trainable and not, e.g. batch-norm statistics)."""
    from zoobot_core.runtime import load_keras_model

    return [np.asarray(w) for w in load_keras_model(model_dir / "model.keras").get_weights()]


def compare(weights: list[np.ndarray], reference: list[np.ndarray]) -> tuple[bool, float, float]:
    """(all arrays bitwise equal, max |difference| over every weight, ||difference|| / ||reference|| over all weights)."""
    identical = len(weights) == len(reference) and all(w.shape == r.shape and w.tobytes() == r.tobytes() for w, r in zip(weights, reference))
    diff = np.concatenate([(w.astype(np.float64) - r).ravel() for w, r in zip(weights, reference)])
    norm = np.sqrt(sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference))
    return identical, float(np.max(np.abs(diff))), float(np.linalg.norm(diff) / norm)


def test_images(shards: Path, n: int = 64) -> np.ndarray:
    """The first n test galaxies of the shards, preprocessed as for training (0-1 RGB)."""
    from zoobot_core import shards as shard_io
    from zoobot_core.datasets import get_dataset
    from zoobot_core.preprocess import preprocess_images
    from zoobot_core.train import preprocessing_config

    meta = shard_io.read_metadata(shards)
    pre = preprocessing_config([], meta["size"], greyscale=False)
    batch = next(iter(get_dataset(shard_io.shard_paths(shards, "test"), batch_size=n, image_encoding=shard_io.image_encoding(shards))))
    return preprocess_images(batch["matrix"], pre).numpy()


def predictions(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """Concentrations for a fixed batch (inference mode), computed in this process for every model alike."""
    from zoobot_core.runtime import load_keras_model

    return np.asarray(load_keras_model(model_dir / "model.keras")(images, training=False))


def summarise(variants: list[Variant], out_root: Path, shards: Path, probes: dict[str, dict[str, str]]) -> list[dict]:
    """One row per variant: timing, final val_loss, and weights/predictions against variants a and e."""
    import pandas as pd

    images = test_images(shards)
    weights = {v.name: load_weights(out_root / v.name) for v in variants}
    preds = {v.name: predictions(out_root / v.name, images) for v in variants}
    rows = []
    for v in variants:
        timing = json.loads((out_root / v.name / "timing.json").read_text())
        history = pd.read_csv(out_root / v.name / "history.csv")
        best_epoch = json.loads((out_root / v.name / "model_config.json").read_text())["best_epoch"]
        row = {
            "variant": v.name,
            "note": v.note,
            "env": v.env_text,
            "threads": v.threads,
            "s_per_epoch_median": round(statistics.median(later_epochs(timing)), 2),
            "first_epoch_s": round(timing["epoch_seconds"][0], 2),
            "epoch_seconds": " ".join(f"{t:.2f}" for t in timing["epoch_seconds"]),
            "first_epoch_loss": f"{history['loss'].iloc[0]:.7f}",
            "final_val_loss": f"{history['val_loss'].iloc[-1]:.7f}",
            "best_epoch": best_epoch,
            "code": timing.get("code", "?"),
        }
        for ref in ("a", "e"):
            if ref in weights:
                same, diff, rel = compare(weights[v.name], weights[ref])
                row[f"identical_to_{ref}"] = same
                row[f"max_abs_dweight_vs_{ref}"] = f"{diff:.3g}"
                row[f"rel_dweight_vs_{ref}"] = f"{rel:.3g}"
                row[f"max_abs_dpred_vs_{ref}"] = f"{float(np.max(np.abs(preds[v.name] - preds[ref]))):.3g}"
        probe = probes.get(v.env_text, {})
        row["onednn_isa"] = probe.get("isa", "").split("isa:")[-1]
        row["onednn_kernels"] = probe.get("kernels", "")
        rows.append(row)
    return rows


def later_epochs(timing: dict) -> list[float]:
    """Seconds of the epochs after the first (which also traces the graph), or the first if there is only one."""
    return timing["epoch_seconds"][1:] or timing["epoch_seconds"]


def pooled_timing(variants: list[Variant], out_root: Path) -> list[str]:
    """Markdown lines: median s/epoch (epochs 2+) pooled over the runs of each (env, threads), relative to the default env at 2 threads."""
    pooled: dict[tuple[str, int], list[float]] = {}
    for v in variants:
        pooled.setdefault((v.env_text, v.threads), []).extend(later_epochs(json.loads((out_root / v.name / "timing.json").read_text())))
    base = statistics.median(pooled.get(("default", 2), [float("nan")]))
    lines = ["| env | threads | epochs timed | median s/epoch | vs default, 2 threads |", "|---|---|---|---|---|"]
    for (env, threads), times in pooled.items():
        lines.append(f"| {env} | {threads} | {len(times)} | {statistics.median(times):.2f} | {statistics.median(times) / base:.2f}x |")
    return lines


def write_tables(rows: list[dict], out_root: Path, probes: dict[str, dict[str, str]], epochs: int, timing_lines: list[str]) -> None:
    """cross_cpu.csv (every column) and cross_cpu.md (the main columns, then the dispatch probes)."""
    with open(out_root / "cross_cpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = [
        "variant", "env", "threads", "s_per_epoch_median", "first_epoch_loss", "final_val_loss", "identical_to_a",
        "max_abs_dweight_vs_a", "rel_dweight_vs_a", "max_abs_dpred_vs_a", "identical_to_e", "max_abs_dweight_vs_e", "code",
    ]
    lines = [
        f"Cross-CPU reproducibility, {epochs} epochs, seed 42 (s/epoch: median of epochs 2+, noisy on a shared 2-core machine)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += ["", "Seconds per epoch pooled over repeated runs:", "", *timing_lines]
    lines += ["", "oneDNN dispatch (ONEDNN_VERBOSE=1, one train step of the model):", ""]
    for env, probe in probes.items():
        lines += [f"- `{env}`: `{probe['isa']}`; kernels: {probe['kernels'] or 'none'}; TensorFlow: {probe['tf_line'][:60] or '-'}"]
    (out_root / "cross_cpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Parse arguments; as --worker train one variant, else run every variant, compare and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=Path("results/demo/shards"))
    parser.add_argument("--out", type=Path, default=Path("results/cross_cpu"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], help="a subset, by name (a and e are the references)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker:
        train_worker(args.shards, args.out, args.epochs, args.threads)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in VARIANTS if v.name in args.variants]
    code = freeze_code(args.out.resolve())
    sys.path.insert(0, str(code))  # this process too (loading models for the comparison) imports the frozen copy
    log.info("runs import zoobot_core from %s (source %s)", code, source_hash(code / "zoobot_core"))
    probes: dict[str, dict[str, str]] = {}
    for v in variants:
        if v.env_text not in probes:
            probes[v.env_text] = probe_dispatch(v, code)
            log.info("dispatch with %s: %s | %s", v.env_text, probes[v.env_text]["isa"], probes[v.env_text]["kernels"])
    (args.out / "probes.json").write_text(json.dumps(probes, indent=1))
    for v in variants:
        run_variant(v, args.shards.resolve(), args.out.resolve(), args.epochs, code)
    rows = summarise(variants, args.out, args.shards, probes)
    if len({r["code"] for r in rows}) > 1:
        log.warning("the runs used different zoobot_core sources (%s): compare only runs of the same code", sorted({r["code"] for r in rows}))
    write_tables(rows, args.out, probes, args.epochs, pooled_timing(variants, args.out))
    log.info("wrote %s:\n%s", args.out / "cross_cpu.md", (args.out / "cross_cpu.md").read_text())


if __name__ == "__main__":
    main()

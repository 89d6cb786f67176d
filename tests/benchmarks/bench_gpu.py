"""GPU throughput benchmark: EfficientNetB0 + the Dirichlet-Multinomial loss, as the pipeline trains it.

Run: `.venv/bin/python tests/benchmarks/bench_gpu.py [--sizes 224 300] [--batch-sizes 128 256] [--steps N] [--out results.json]`
on the TensorFlow backend, or with KERAS_BACKEND=jax (or --backend jax) on a machine with JAX and no TensorFlow:
only zoobot_core.model, .losses, .schemas, .images and .hardware (cpu_description) are imported, none of which
imports TensorFlow. --tiny is the smoke test (tests/test_bench_gpu.py).

Model side: images/s of training (Adam and the project's loss, compiled as train.py compiles it) and of prediction,
per network input size (what EfficientNetB0 sees; the model takes size / crop_fraction px images and crops them to
size, as the DECaLS config takes 300 px to 225 -> 224), batch size, precision (float32, mixed_bfloat16,
mixed_float16; float16 is skipped without a GPU) and XLA:
  off: jit_compile=False, as train.py compiles (on JAX that runs op by op, so JAX reports it as skipped);
  on:  jit_compile=True. Keras turns that off for the full model, because its RandomRotation and RandomCrop say
       supports_jit=False (and really fail under XLA: TensorFlow has no XLA kernel for ImageProjectiveTransformV3,
       JAX cannot slice at traced offsets), so the row times the same EfficientNetB0 + head + loss without the
       augmentation layers ("no augmentation" model), which is also how the NVIDIA anchor is timed.
Synthetic uint8-range images and vote counts are made once on the device, so no input pipeline is timed: TensorFlow
runs train_on_batch / predict_on_batch on the device-resident batch (each step syncs), JAX runs fit / predict over a
generator repeating it (no host copy, no per-step sync). The first step (tracing and compilation: "compile") and
--warmup more steps are not timed; rates are the median of --windows windows of --steps steps.

Input side: the project's decode + resize (zoobot_core.images.load_rgb, PIL) of 424 px cutouts (the real sample in
../shared when present, else synthetic ones) to the model's input size, in a pool of os.cpu_count() processes, and
how many such cores the input would need to keep up with the fastest measured training rate at that size.
Rows are rewritten to --out as JSON after each one, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "gz_decals_rings_sample" / "images"
if str(REPO) not in sys.path:  # run as a script on a machine where the package is not installed
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_gpu")

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TREE = "gz_decals_dr5"
CUTOUT_PX = 424  # DECaLS cutouts
# published anchors (EfficientNet-B0, 224 px) and the project's goals
NVIDIA_A100 = {"source": "NVIDIA DeepLearningExamples EfficientNet-B0, 224 px, 1x A100", "train_img_s": 3454, "train_setting": "AMP + XLA",
               "predict_img_s": 9730}
GOALS = {"device": "one H100-class GPU", "size": 224, "train_img_s": 3000, "predict_img_s": 9000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --tiny shrinks everything for the test on CPU."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 300], help="network input sizes (px)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="jit_compile settings (off: as train.py; on: XLA; the JAX backend has no real 'off')")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows; the rate is their median")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    parser.add_argument("--channels", type=int, default=3, help="image channels (the DECaLS config trains on 1, greyscale)")
    parser.add_argument("--crop-fraction", type=float, default=0.75, help="model input = size / crop_fraction px, cropped to size")
    parser.add_argument("--input-images", type=int, default=512, help="cutouts decoded per input-side window")
    parser.add_argument("--input-repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="input-side processes")
    parser.add_argument("--backend", choices=("jax", "tensorflow"), help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--out", type=Path, help="write every row as JSON here (rewritten after each row)")
    parser.add_argument("--tiny", action="store_true", help="32 px, batches 4 and 8, 2 steps, float32 + mixed_bfloat16, 8 cutouts: a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.batch_sizes, args.precisions = [32], [4, 8], ["float32", "mixed_bfloat16"]
        args.steps, args.windows, args.warmup, args.input_images, args.input_repeats = 2, 2, 1, 8, 1
        # XLA off on TensorFlow (a CPU XLA compile of the training step takes longer than the whole smoke test); on JAX, XLA
        args.xla = ["on"] if (args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")) == "jax" else ["off"]
    return args


# ---------------------------------------------------------------- input side (no Keras: runs in worker processes)


def _decode_one(task: tuple[str, int]) -> int:
    """Decode and resize one cutout, as the resize step does; returns the output width."""
    from zoobot_core.images import load_rgb

    path, size = task
    return load_rgb(path, size).size[0]


def cutouts(workdir: Path, n: int) -> tuple[list[Path], str]:
    """n paths of 424 px cutouts (the real sample repeated, or synthetic PNGs rendered into workdir) and their origin."""
    real = sorted(SAMPLE.glob("*.png")) + sorted(SAMPLE.glob("*.jpg"))
    if real:
        return [real[i % len(real)] for i in range(n)], f"real DECaLS sample ({len(real)} files, {SAMPLE})"
    from PIL import Image

    from zoobot_core.synthetic import draw_morphology, render_galaxy

    distinct = min(n, 64)
    for i in range(distinct):
        rng = np.random.default_rng([0, i])
        Image.fromarray(render_galaxy(draw_morphology(rng), CUTOUT_PX, rng)).save(workdir / f"syn{i}.png")
    paths = sorted(workdir.glob("syn*.png"))
    return [paths[i % len(paths)] for i in range(n)], f"synthetic {CUTOUT_PX} px PNGs ({distinct} distinct)"


def input_rates(sizes: list[int], crop_fraction: float, n_images: int, workers: int, repeats: int) -> list[dict]:
    """Decode + resize rate (img/s, median of repeats) to the model's input size for each network size, with `workers`
    processes (spawned, not forked: safe beside JAX's and TensorFlow's threads)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths, origin = cutouts(Path(tmp), n_images)
        log.info("input side: %d cutouts from %s, %d worker processes", len(paths), origin, workers)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_decode_one, [(str(paths[0]), sizes[0])] * workers * 2, chunksize=1)  # start and import in every worker
            for network_size in sizes:
                size = round(network_size / crop_fraction)
                tasks = [(str(p), size) for p in paths]
                chunk = max(1, len(tasks) // (workers * 8))
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    pool.map(_decode_one, tasks, chunksize=chunk)
                    times.append(time.perf_counter() - start)
                rate = len(tasks) / statistics.median(times)
                rows.append({"size": network_size, "input_size": size, "images": len(tasks), "origin": origin, "workers": workers, "img_s": rate, "img_s_per_core": rate / workers})
                log.info("input side: %d -> %d px: %.0f img/s on %d workers", CUTOUT_PX, size, rate, workers)
    return rows


# ---------------------------------------------------------------- environment


def accelerator(backend: str) -> tuple[str | None, str]:
    """(GPU name or None, backend library version) as the Keras backend sees them."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return (None if device.platform == "cpu" else f"{device.device_kind} ({device.platform}, {len(jax.devices())} device(s))"), f"jax {jax.__version__}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name) if gpus else None
    return (f"{name} ({len(gpus)} GPU(s))" if name else None), f"tensorflow {tf.__version__}"


def nvidia_smi_gpus() -> list[str]:
    """GPU names from nvidia-smi, if it is installed (empty otherwise)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def environment(backend: str) -> dict:
    """Backend, versions, the device the model runs on (GPU, else the CPU model), and the CPU that feeds it."""
    import keras

    from zoobot_core.hardware import cpu_description

    gpu, library = accelerator(backend)
    cpu = cpu_description()
    smi = nvidia_smi_gpus()
    if gpu is None and smi:
        log.warning("nvidia-smi lists %s but the %s backend sees no GPU: timing on the CPU", ", ".join(smi), backend)
    device = gpu or f"CPU: {cpu['model']} ({cpu['usable_cores']} usable cores)"
    return {"backend": backend, "keras": keras.__version__, "library": library, "device": device, "gpu": gpu is not None, "nvidia_smi": smi,
            "cpu": cpu["model"], "cpu_cores": cpu["usable_cores"], "python": platform.python_version()}


# ---------------------------------------------------------------- model side


class dtype_policy:
    """Build layers under Keras dtype policy `name` inside this block and restore the previous one after.

    hardware.precision_policy does the same but asks TensorFlow for GPUs under mixed_float16, so it cannot run on JAX alone.
    """

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        import keras

        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc) -> None:
        import keras

        keras.config.set_dtype_policy(self.previous)


def build_model(size: int, channels: int, crop_fraction: float, precision: str, jit_compile: bool, tree):
    """The pipeline's model (augmentation layers, EfficientNetB0, head) for `size` px network input, with its loss,
    compiled as train.train_from_shards compiles it (Adam 1e-3); Keras may turn jit_compile off (see not_jittable)."""
    import keras

    from zoobot_core.losses import DirichletMultinomialLoss
    from zoobot_core.model import get_model

    with dtype_policy(precision):
        model = get_model(len(tree.label_cols), round(size / crop_fraction), size, size, channels, 0.2, seed=0)
        # under mixed_float16 compile wraps Adam in a LossScaleOptimizer
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile=True`")  # reported per row instead
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DirichletMultinomialLoss(tree.question_index_groups), jit_compile=jit_compile)
        model.optimizer.build(model.trainable_variables)
    return model


def without_augmentation(model, size: int, channels: int, precision: str, tree):
    """The same EfficientNetB0, head and loss on `size` px images with no augmentation layers, compiled with XLA.

    Built from the pipeline model's own layers: the Keras augmentation layers it uses cannot be compiled with XLA
    (see not_jittable), so this is what XLA gives the network itself (as the NVIDIA anchor times it, augmenting elsewhere).
    """
    import keras

    from zoobot_core.losses import DirichletMultinomialLoss
    from zoobot_core.model import BASE_NAME, DROPOUT_NAME, HEAD_NAME

    with dtype_policy(precision):
        inputs = keras.Input((size, size, channels), name="image")
        x = model.get_layer("to_efficientnet_range")(inputs)  # the 0-255 scaling get_model puts before the base
        outputs = model.get_layer(HEAD_NAME)(model.get_layer(DROPOUT_NAME)(model.get_layer(BASE_NAME)(x)))
        bare = keras.Model(inputs, outputs, name="zoobot_without_augmentation")
        bare.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DirichletMultinomialLoss(tree.question_index_groups), jit_compile=True)
        bare.optimizer.build(bare.trainable_variables)
    return bare


def not_jittable(model) -> list[str]:
    """The layers that tell Keras they cannot be compiled with XLA (supports_jit False), which makes compile turn jit_compile off."""
    return [f"{layer.name} ({type(layer).__name__})" for layer in model._flatten_layers() if not getattr(layer, "supports_jit", True)]


def synthetic_batch(batch_size: int, input_size: int, channels: int, n_answers: int, seed: int) -> tuple:
    """Device-resident images (uint8 values scaled to [0, 1], as preprocessing gives) and vote counts (0-40 per answer)."""
    import keras

    images = keras.ops.cast(keras.random.randint((batch_size, input_size, input_size, channels), 0, 256, seed=seed), "float32") / 255.0
    votes = keras.ops.cast(keras.random.randint((batch_size, n_answers), 0, 41, seed=seed + 1), "float32")
    return images, votes


def repeat(item) -> Iterator:
    """The same batch forever (a generator JAX's fit reads without copying)."""
    while True:
        yield item


def steppers(model, backend: str, images, votes) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """(train(n), predict(n)): n steps on the device-resident batch, returning once the device has finished them."""
    import keras

    if backend == "jax":

        def train(n: int) -> None:
            model.fit(repeat((images, votes)), steps_per_epoch=n, epochs=1, verbose=0, shuffle=False)
            keras.ops.convert_to_numpy(model.trainable_variables[-1])  # blocks until the last step's update exists

        def predict(n: int) -> None:
            model.predict(repeat((images,)), steps=n, verbose=0)  # returns numpy: synced

    else:

        def train(n: int) -> None:
            for _ in range(n):
                model.train_on_batch(images, votes)  # returns the loss as a Python float: synced

        def predict(n: int) -> None:
            for _ in range(n):
                model.predict_on_batch(images)

    return train, predict


def time_rate(step: Callable[[int], None], batch_size: int, steps: int, windows: int, warmup: int) -> tuple[float, float, list[float]]:
    """(first-step seconds incl. tracing and compilation, median img/s, img/s of each window) after `warmup` more steps."""
    start = time.perf_counter()
    step(1)
    first = time.perf_counter() - start
    if warmup:
        step(warmup)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        step(steps)
        rates.append(batch_size * steps / (time.perf_counter() - start))
    return first, statistics.median(rates), rates


def short_error(err: Exception) -> str:
    """One line for the table: the ops XLA lacks, or the error's first line."""
    text = str(err)
    unsupported = re.search(r"Detected unsupported operations.*?: ([A-Za-z0-9_, ]+?) \(No registered", text)
    if unsupported:
        return f"XLA has no kernel for {unsupported.group(1)}"
    first = re.sub(r"\x1b\[[0-9;]*m", "", next((line.strip() for line in text.splitlines() if line.strip()), ""))  # no terminal colours
    return f"{type(err).__name__}: {first[:240]}"


def out_of_memory(err: Exception) -> bool:
    """Whether err is the device running out of memory (a smaller batch may still fit; other errors repeat at every batch size)."""
    text = f"{type(err).__name__} {err}"
    return "RESOURCE_EXHAUSTED" in text or "ResourceExhausted" in text or "out of memory" in text.lower()


def model_rows(args: argparse.Namespace, env: dict, on_row: Callable[[dict], None]) -> None:
    """Time every size x precision x XLA setting x batch size; on_row gets each row (ok, skipped or failed) as it is done.

    XLA off: the pipeline's model as train.py compiles it (jit_compile=False). XLA on: compile(jit_compile=True); when
    Keras turns that off because augmentation layers cannot be jitted, the row times the model without them, with XLA.
    """
    import keras

    from zoobot_core.schemas import get_tree

    backend = env["backend"]
    tree = get_tree(TREE)
    for size in args.sizes:
        input_size = round(size / args.crop_fraction)
        for precision in args.precisions:
            for xla in args.xla:
                base = {"backend": backend, "device": env["device"], "size": size, "precision": precision, "xla": xla, "model": "full",
                        "input_size": input_size, "channels": args.channels, "steps": args.steps, "windows": args.windows}

                def skip_all(status: str, reason: str, base: dict = base, **extra) -> None:
                    for batch_size in args.batch_sizes:
                        on_row({**base, **extra, "batch_size": batch_size, "status": status, "reason": reason})

                if precision == "mixed_float16" and not env["gpu"]:
                    skip_all("skipped", "no GPU: float16 on a CPU is emulated, slower than float32; not timed")
                    continue
                if backend == "jax" and xla == "off":
                    skip_all("skipped", "the JAX backend compiles with XLA; jit_compile=False runs op by op, which no one trains with", xla="off (op by op)")
                    continue
                keras.backend.clear_session()
                gc.collect()
                note = ""
                try:
                    start = time.perf_counter()
                    model = build_model(size, args.channels, args.crop_fraction, precision, xla == "on", tree)
                    if xla == "on" and not model.jit_compile:
                        blocked = not_jittable(model)
                        model = without_augmentation(model, size, args.channels, precision, tree)
                        base.update(model="no augmentation", input_size=size)
                        note = f"Keras turns jit_compile off for the full model ({', '.join(blocked)} not jittable): timed without augmentation"
                    build_s = time.perf_counter() - start
                except Exception as err:  # one configuration failing should not lose the others
                    skip_all("failed", f"build: {short_error(err)}")
                    continue
                failure = None
                for batch_size in args.batch_sizes:
                    row = {**base, "batch_size": batch_size, "build_s": build_s}
                    if failure:
                        on_row({**row, "status": "failed", "reason": failure})
                        continue
                    log.info("%d px (%s, %d px input), batch %d, %s, XLA %s: timing", size, base["model"], base["input_size"], batch_size, precision, xla)
                    try:
                        images, votes = synthetic_batch(batch_size, base["input_size"], args.channels, len(tree.label_cols), seed=size + batch_size)
                        train, predict = steppers(model, backend, images, votes)
                        train_first, train_rate, train_windows = time_rate(train, batch_size, args.steps, args.windows, args.warmup)
                        predict_first, predict_rate, predict_windows = time_rate(predict, batch_size, args.steps, args.windows, args.warmup)
                    except Exception as err:
                        reason = short_error(err)
                        failure = None if out_of_memory(err) else reason
                        on_row({**row, "status": "failed", "reason": reason})
                        continue
                    on_row({**row, "status": "ok", "note": note, "train_compile_s": train_first, "train_img_s": train_rate,
                            "train_img_s_windows": train_windows, "predict_compile_s": predict_first, "predict_img_s": predict_rate,
                            "predict_img_s_windows": predict_windows})
                del model


# ---------------------------------------------------------------- report


def markdown(rows: list[dict], inputs: list[dict]) -> str:
    """The rows as a markdown table (notes below it), then the input side against the fastest training rate at each size."""
    lines = ["| size (input px) | model | batch | precision | XLA | compile s (train / predict) | train img/s | predict img/s | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []

    def ref(text: str) -> str:
        """A short reference to a note printed once below the table."""
        if not text:
            return ""
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    for r in rows:
        head = f"| {r['size']} ({r['input_size']}) | {r['model']} | {r['batch_size']} | {r['precision']} | {r['xla']} "
        if r["status"] == "ok":
            note = ref(r.get("note", ""))
            lines.append(f"{head}| {r['train_compile_s']:.1f} / {r['predict_compile_s']:.1f} | {r['train_img_s']:,.0f} | {r['predict_img_s']:,.0f} "
                         f"| {note}{' ' if note else ''}|")
        else:
            lines.append(f"{head}| | | | {r['status']} {ref(r['reason'])} |")
    if notes:
        lines += [""] + [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    if inputs:
        lines += ["", "| input side: 424 px -> input px | workers | img/s | img/s per core | cores to keep up with training | fastest training img/s |",
                  "|---|---|---|---|---|---|"]
        for i in inputs:
            need = f"{i['cores_needed']:.1f}" if i.get("cores_needed") is not None else "n/a"
            train = f"{i['train_img_s']:,.0f}" if i.get("train_img_s") is not None else "n/a"
            lines.append(f"| {CUTOUT_PX} -> {i['input_size']} | {i['workers']} | {i['img_s']:,.0f} | {i['img_s_per_core']:,.1f} | {need} | {train} |")
    return "\n".join(lines)


def anchors_text(rows: list[dict]) -> str:
    """The published anchors and goals, with the best measured rates at their size."""
    at = [r for r in rows if r["status"] == "ok" and r["size"] == GOALS["size"]]
    lines = [
        f"Anchor: {NVIDIA_A100['source']}: {NVIDIA_A100['train_img_s']:,} img/s training ({NVIDIA_A100['train_setting']}), "
        f"{NVIDIA_A100['predict_img_s']:,} img/s inference.",
        f"Goal on {GOALS['device']} at {GOALS['size']} px: >= {GOALS['train_img_s']:,} img/s training, >= {GOALS['predict_img_s']:,} img/s prediction.",
    ]
    if at:
        train, predict = max(at, key=lambda r: r["train_img_s"]), max(at, key=lambda r: r["predict_img_s"])
        lines.append(
            f"Best here at {GOALS['size']} px: training {train['train_img_s']:,.0f} img/s ({train['model']} model, {train['precision']}, XLA {train['xla']}, "
            f"batch {train['batch_size']}; "
            f"{train['train_img_s'] / GOALS['train_img_s']:.0%} of the goal), prediction {predict['predict_img_s']:,.0f} img/s "
            f"({predict['model']} model, {predict['precision']}, XLA {predict['xla']}, batch {predict['batch_size']}; "
            f"{predict['predict_img_s'] / GOALS['predict_img_s']:.0%} of the goal)."
        )
    return "\n".join(lines)


def with_cores_needed(inputs: list[dict], rows: list[dict]) -> list[dict]:
    """Add the fastest training rate at each size and the input-side cores needed to match it."""
    out = []
    for i in inputs:
        rates = [r["train_img_s"] for r in rows if r["status"] == "ok" and r["size"] == i["size"]]
        best = max(rates) if rates else None
        out.append({**i, "train_img_s": best, "cores_needed": best / i["img_s_per_core"] if best else None})
    return out


def write_json(path: Path, env: dict, rows: list[dict], inputs: list[dict]) -> None:
    """All results as JSON, replaced atomically (a run cut short keeps the rows done so far)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"environment": env, "anchors": {"nvidia_a100": NVIDIA_A100, "goals": GOALS}, "rows": rows, "input": inputs}, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()

    inputs = input_rates(args.sizes, args.crop_fraction, args.input_images, args.workers, args.input_repeats)

    import keras

    env = environment(keras.backend.backend())
    if args.tiny and env["backend"] == "tensorflow":
        import tensorflow as tf

        # a smoke test, not a measurement: skipping Grappler's graph rewrites saves ~3 s of each of its four traces on 2 CPU cores
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        env["note"] = "--tiny: TensorFlow graph optimisation (Grappler) off"
    log.info("%s backend (%s), Keras %s, on %s", env["backend"], env["library"], env["keras"], env["device"])
    rows: list[dict] = []

    def on_row(row: dict) -> None:
        rows.append(row)
        if row["status"] == "ok":
            log.info("  train %.0f img/s (first step %.1f s), predict %.0f img/s (first step %.1f s)",
                     row["train_img_s"], row["train_compile_s"], row["predict_img_s"], row["predict_compile_s"])
        else:
            log.info("  %d px, batch %d, %s, XLA %s: %s (%s)", row["size"], row["batch_size"], row["precision"], row["xla"], row["status"], row["reason"])
        if args.out:
            write_json(args.out, env, rows, with_cores_needed(inputs, rows))

    model_rows(args, env, on_row)
    inputs = with_cores_needed(inputs, rows)
    if args.out:
        write_json(args.out, env, rows, inputs)

    print(f"\nBackend {env['backend']} ({env['library']}), Keras {env['keras']}; device: {env['device']}; input side on {env['cpu']}")
    print(f"EfficientNetB0 + Dirichlet-Multinomial loss ({TREE} tree), {args.channels} channel(s); img/s = median of {args.windows} windows "
          f"of {args.steps} steps after {args.warmup} warm-up step(s); compile = the first step's time (tracing + compilation)"
          + (f"; {env['note']}" if env.get("note") else "") + "\n")
    print(markdown(rows, inputs))
    print()
    print(anchors_text(rows))
    log.info("done in %.0f s", time.perf_counter() - started)
    if not any(math.isfinite(r.get("train_img_s", math.nan)) for r in rows):
        sys.exit("no configuration could be timed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    main()

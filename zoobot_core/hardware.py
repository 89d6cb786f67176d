"""Where and in what precision training runs: tf.distribute strategy and Keras dtype policy.

Both are chosen from config, never left as process-wide state: `precision_policy` restores the
previous Keras dtype policy when its block ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTE = ("auto", "none", "mirrored")


def visible_gpus() -> list[str]:
    """Names of the GPUs TensorFlow can see (empty on a CPU-only build or machine)."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


def distribution_strategy(mode: str = "auto", devices: list[str] | None = None):
    """A tf.distribute strategy for `mode`.

    auto: MirroredStrategy over all GPUs when there are two or more, otherwise the default
    (one device). mirrored: MirroredStrategy over `devices` (default: all GPUs, or the CPU).
    none: the default strategy.
    """
    import tensorflow as tf

    if mode not in DISTRIBUTE:
        raise ValueError(f"train.distribute must be one of {DISTRIBUTE}, not {mode!r}")
    gpus = visible_gpus()
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log.info("MirroredStrategy over %d replicas: %s", strategy.num_replicas_in_sync, ", ".join(strategy.extended.worker_devices))
        return strategy
    log.info("One device (%s)", gpus[0] if gpus else "CPU")
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def precision_policy(precision: str = "float32") -> Iterator[None]:
    """Build layers under Keras dtype policy `precision` inside this block; restore the previous policy after.

    mixed_float16 computes in float16 with float32 weights (and Keras adds loss scaling at
    compile time); it pays off on GPUs with tensor cores. mixed_bfloat16 suits TPUs and recent CPUs.
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "mixed_float16" and not visible_gpus():
        log.warning("train.precision is mixed_float16 but there is no GPU: on a CPU float16 is slower than float32, not faster")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# CPU features that change which kernels oneDNN and Eigen pick, and so the last bits of float sums
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
NUMERIC_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "OMP_NUM_THREADS", "TF_DETERMINISTIC_OPS", "CUDA_VISIBLE_DEVICES", "KERAS_BACKEND")


def cpu_description() -> dict:
    """CPU model, architecture, usable cores and the instruction-set extensions that decide float kernels (Linux: /proc/cpuinfo)."""
    import os
    import platform

    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model or platform.processor() or None, "machine": platform.machine(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "isa": [f for f in ISA_FLAGS if f in flags]}


def compute_environment() -> dict:
    """What decides a training run's last bits, recorded beside the model: CPU and its instruction sets, GPUs,
    the backend, TensorFlow's oneDNN setting and thread pools (README: Reproducible reruns). Op determinism
    is train.deterministic, in the model's train_config."""
    import os

    import keras

    environment = {"cpu": cpu_description(), "keras_backend": keras.backend.backend(), "env": {k: os.environ.get(k) for k in NUMERIC_ENV}}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        environment["tensorflow"] = {
            "version": tf.__version__,
            # on by default for x86-64 Linux builds since TF 2.9; TF_ENABLE_ONEDNN_OPTS=0 turns it off
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False"),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0: one per usable core
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "gpus": [tf.config.experimental.get_device_details(d).get("device_name", d.name) for d in tf.config.list_physical_devices("GPU")],
        }
    return environment


def cap_onednn_isa(isa: str | None) -> None:
    """Cap the instruction set oneDNN dispatches to (ONEDNN_MAX_CPU_ISA) for this process and the processes it starts.

    For a process's entry point (each TensorFlow job's script calls it first), never inside a library call: it
    writes os.environ, and oneDNN reads it once, when TensorFlow starts. None leaves the environment as it is.
    """
    import os
    import sys

    if not isa:
        return
    if "tensorflow" in sys.modules and os.environ.get("ONEDNN_MAX_CPU_ISA") != isa:
        log.warning("TensorFlow is already running in this process; ONEDNN_MAX_CPU_ISA=%s applies to jobs started from now on", isa)
    os.environ["ONEDNN_MAX_CPU_ISA"] = isa

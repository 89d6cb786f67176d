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

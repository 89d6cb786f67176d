"""MC-dropout prediction benchmark: ours (base network once, dropout + head n times) vs n full passes.

Run: `make bench` (or `.venv/bin/python tests/benchmarks/bench_predict.py`). A randomly initialised
EfficientNetB0 model as the pipeline builds it (the cost does not depend on the weights), random
images; galaxies/s for n = 1, 5, 10, 20 dropout samples, median of --repeats. Then test-time
augmentation (predict.tta_views): v dihedral views x 5 dropout samples, ours (base once per view)
vs v x 5 full passes, and ours against plain prediction (v = 1).
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-galaxies", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras

    from zoobot_core.model import DROPOUT_NAME, HEAD_NAME, get_model, representation_model
    from zoobot_core.predict import dihedral_views

    crop = int(round(args.size * 0.75))
    model = get_model(34, args.size, crop, max(crop, 32), 3, seed=0, batchnorm_momentum=0.9)
    extractor, head = representation_model(model), model.get_layer(HEAD_NAME)
    dropout = keras.layers.Dropout(model.get_layer(DROPOUT_NAME).rate, seed=0)
    images = np.random.default_rng(0).random((args.n_galaxies, args.size, args.size, 3)).astype("float32") * 255
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]

    def baseline(n: int) -> None:
        """n full passes: the base network runs again for every dropout sample."""
        for batch in batches:
            for _ in range(n):
                keras.ops.convert_to_numpy(head(dropout(extractor.predict_on_batch(batch), training=True)))

    def ours(n: int, views: int = 1) -> None:
        for batch in batches:
            for view in dihedral_views(batch, views):
                features = extractor.predict_on_batch(view)
                for _ in range(n):
                    keras.ops.convert_to_numpy(head(dropout(features, training=True)))

    def baseline_tta(n: int, views: int) -> None:
        """A full pass for every sample of every view."""
        for batch in batches:
            for view in dihedral_views(batch, views):
                for _ in range(n):
                    keras.ops.convert_to_numpy(head(dropout(extractor.predict_on_batch(view), training=True)))

    ours(1), baseline(1)  # build and warm up
    print(f"{args.n_galaxies} galaxies at {args.size} px, batch {args.batch_size}; galaxies/s, median of {args.repeats}; {keras.backend.backend()} backend\n")
    print("| dropout samples n | baseline: n full passes | ours: base once, head n times | speed-up |")
    print("|---|---|---|---|")
    for n in args.samples:
        base_s, ours_s = median_seconds(lambda n=n: baseline(n), args.repeats), median_seconds(lambda n=n: ours(n), args.repeats)
        print(f"| {n} | {args.n_galaxies / base_s:.0f} | {args.n_galaxies / ours_s:.0f} | {base_s / ours_s:.1f}x |")
    plain_s = median_seconds(lambda: ours(5), args.repeats)
    print("\n| test-time views v (x 5 dropout samples) | baseline: 5v full passes | ours: base v times | speed-up | ours vs v = 1 |")
    print("|---|---|---|---|---|")
    for v in args.views:
        base_s = median_seconds(lambda v=v: baseline_tta(5, v), args.repeats)
        ours_s = median_seconds(lambda v=v: ours(5, v), args.repeats)
        print(f"| {v} | {args.n_galaxies / base_s:.0f} | {args.n_galaxies / ours_s:.0f} | {base_s / ours_s:.1f}x | {ours_s / plain_s:.1f}x the time |")


if __name__ == "__main__":
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.disable(logging.WARNING)
    main()

"""timm's side of the encoder comparisons; runs in an environment with torch and timm (`make timm-env`).

  make  --arch A --out DIR [--size 224] [--n 4] [--greyscale]: a full-size timm A (random weights, every
        norm parameter, layer scale and BatchNorm statistic randomised) saved as its Hugging Face repo
        would be (config.json as published, without model_args; pytorch_model.bin), with io.npz: the
        images (NHWC in [0, 1]) and timm's pooled features in float64.
  save  --arch A --out DIR [--greyscale]: timm's own random initialisation of A (pretrained=False), saved as
        its Hugging Face repo would be: the folder a user would `hf download`, with untrained weights.
  speed --arch A [--size 224] [--n 64] [--batch 32] [--threads 2]: timm's feature extraction images/s
        (float32, eval mode, no_grad) and this process's peak memory, as one JSON line.

Used by tests/test_encoders_timm.py and tests/benchmarks/bench_encoders.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "encoders"))
from make_fixtures import calibrate_batchnorm, features, randomise, test_images  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM): unlike ru_maxrss, which Linux carries across exec from the forking
    parent, it is this program's own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def _model(arch: str, greyscale: bool) -> torch.nn.Module:
    return timm.create_model(arch, pretrained=False, num_classes=0, **({"in_chans": 1} if greyscale else {})).eval()


def make(arch: str, out: Path, size: int, n: int, greyscale: bool, seed: int = 0) -> None:
    """Save a randomised full-size timm network as a Hugging Face repo folder, with timm's features of n images."""
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = _model(arch, greyscale)
    randomise(model, seed)
    rng = np.random.default_rng(seed)
    channels = 1 if greyscale else 3
    calibrate_batchnorm(model, test_images(rng, 8, size, channels), seed)
    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(out), safe_serialization=False)
    config = json.loads((out / "config.json").read_text())
    config.pop("model_args", None)  # as Zoobot's published config.json: the architecture's name only
    (out / "config.json").write_text(json.dumps(config, indent=2))
    images = test_images(rng, n, size, channels)
    np.savez(out / "io.npz", images=images, features=features(model, images))
    print(json.dumps({"arch": arch, "params": sum(p.numel() for p in model.parameters()), "timm": timm.__version__, "torch": torch.__version__}))


def save(arch: str, out: Path, greyscale: bool, seed: int = 0) -> None:
    """timm's random initialisation of `arch`, saved as a Hugging Face repo folder (config.json as published, pytorch_model.bin)."""
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = _model(arch, greyscale)
    save_for_hf(model, str(out), safe_serialization=False)
    config = json.loads((out / "config.json").read_text())
    config.pop("model_args", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(json.dumps({"arch": arch, "params": sum(p.numel() for p in model.parameters()), "folder": str(out)}))


def speed(arch: str, size: int, n: int, batch: int, threads: int, greyscale: bool) -> None:
    """timm's pooled features of n random images, batch at a time, after one warm-up batch: images/s and peak memory."""
    torch.set_num_threads(threads)
    model = _model(arch, greyscale)
    images = torch.rand(n, 1 if greyscale else 3, size, size)
    with torch.no_grad():
        model(images[:batch])
        started = time.perf_counter()
        for start in range(0, n, batch):
            model(images[start : start + batch])
        seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    print(json.dumps({"arch": arch, "images_per_s": n / seconds, "peak_mb": peak_mb, "threads": threads, "timm": timm.__version__, "torch": torch.__version__}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["make", "save", "speed"])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--greyscale", action="store_true")
    args = parser.parse_args()
    if args.command == "make":
        make(args.arch, args.out, args.size, args.n, args.greyscale)
    elif args.command == "save":
        save(args.arch, args.out, args.greyscale)
    else:
        speed(args.arch, args.size, args.n, args.batch, args.threads, args.greyscale)


if __name__ == "__main__":
    main()

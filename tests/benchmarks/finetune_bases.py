"""Finetuning by base, against the baselines, through the command a user types: `snakemake finetune`.

For every base, seed and unfreezing setting this runs `snakemake finetune` with
config/finetune_rings.yaml (the 104 real rings in ../shared by default) in its own run folder,
then collects each run's out-of-fold scores (metrics.json) and wall time. Seeds change the folds
(and every other random choice), so the spread over seeds shows how much a ranking owes to one
split. Bases the pipeline trains (the default run's model, and a larger, longer-trained one) are
trained first, once, by `snakemake` itself.

    python tests/benchmarks/finetune_bases.py                      # everything (~45 min on 2 cores)
    python tests/benchmarks/finetune_bases.py --bases none demo --seeds 42 --unfreeze 0

Prints a markdown table and writes every number to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
METHODS = ("finetuned", "linear_probe", "radial_profile", "pixels", "constant")
# bases this pipeline trains on the synthetic default: run name -> config overrides of the default run
TRAINED_BASES = {
    "demo": {},  # `make run`'s model: 64 px images, crop 48, ~20 epochs
    "demo128": {"images": {"size": 128}, "train": {"epochs": 40, "patience": 8}},  # 128 px images (crop 96), trained longer
}


def snakemake(workdir: Path, configfiles: list[Path], *targets: str) -> float:
    """Run the workflow in `workdir`; return its wall time in seconds (raise with the log's tail on failure)."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(REPO / "workflow/Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", *map(str, configfiles)]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def overlay(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def base_model(name: str, workdir: Path, timings: dict) -> str:
    """finetune.base_model for a base name: 'none' / 'imagenet' as they are; a trained base's model.keras (trained here once)."""
    if name not in TRAINED_BASES:
        return name
    model = workdir / "results" / name / "model" / "model.keras"
    if not model.exists():
        print(f"training base {name} ...", flush=True)
        timings[f"train {name}"] = snakemake(workdir, [overlay(workdir / "configs" / f"{name}.yaml", {"run_name": name, **TRAINED_BASES[name]})],
                                             f"results/{name}/model/model.keras")
    return str(model)


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir).resolve()
    finetune_config = yaml.safe_load((REPO / "config/finetune_rings.yaml").read_text())
    finetune = finetune_config["finetune"]
    if args.catalog:
        finetune.update(catalog=str(Path(args.catalog).resolve()), id_column=args.id_column, file_column=args.file_column, label_column=args.label_column)
    else:
        finetune["catalog"] = str((REPO / finetune["catalog"]).resolve())
    if not Path(finetune["catalog"]).is_file():
        raise SystemExit(f"{finetune['catalog']} not found: the real rings sample lives in ../shared beside the checkout")
    finetune.update(image_size=args.image_size, survey={"catalog": None})
    results, timings = [], {}
    for base in args.bases:
        model = base_model(base, workdir, timings)
        for unfreeze in args.unfreeze:
            for seed in args.seeds:
                run_name = f"rings_{base}_u{unfreeze}_s{seed}"
                config = {"run_name": run_name, "seed": seed, "finetune": {**finetune, "base_model": model,
                          "settings": {**finetune.get("settings", {}), "unfreeze_blocks": unfreeze}}}
                seconds = snakemake(workdir, [overlay(workdir / "configs" / f"{run_name}.yaml", config)], "finetune")
                metrics = json.loads((workdir / "results" / run_name / "finetune" / "metrics.json").read_text())
                results.append({"base": base, "unfreeze_blocks": unfreeze, "seed": seed, "seconds": seconds, "n_scored": metrics["n_scored"],
                                **{f"{m}_{s}": metrics["methods"][m][s]["pooled"] for m in METHODS for s in ("balanced_accuracy", "roc_auc")},
                                **{f"{m}_{s}_ci95": metrics["methods"][m][s]["ci95"] for m in METHODS for s in ("balanced_accuracy", "roc_auc")},
                                **{f"minus_{m}_{s}": metrics["methods"][m]["finetuned_minus_this"][s] for m in METHODS[1:] for s in ("balanced_accuracy", "roc_auc")}})
                print(f"{run_name}: {seconds:.0f} s; finetuned balanced accuracy {results[-1]['finetuned_balanced_accuracy']:.3f}, "
                      f"AUC {results[-1]['finetuned_roc_auc']:.3f}", flush=True)
    return {"runs": results, "timings": timings, "image_size": args.image_size, "catalog": finetune["catalog"]}


def table(report: dict) -> str:
    """Markdown: one row per (base, unfreezing) for the finetuned model, then the baselines once (they do not
    depend on the base): mean ± std over seeds of the pooled out-of-fold scores, and the finetuned model's
    paired AUC difference from the radial-profile baseline and from its own base's linear probe."""
    import numpy as np
    import pandas as pd

    runs = pd.DataFrame(report["runs"])
    lines = ["| model | balanced accuracy | ROC AUC | AUC minus radial profile's | AUC minus its own linear probe's | wall time per run |",
             "|---|---|---|---|---|---|"]

    def cell(values) -> str:
        values = np.asarray(values, float)
        return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    def versus(diffs) -> str:
        """Mean difference over seeds, and in how many seeds the paired bootstrap 95% interval lies above / below 0."""
        above = sum(d["ci95"][0] > 0 for d in diffs)
        below = sum(d["ci95"][1] < 0 for d in diffs)
        return f"{np.mean([d['difference'] for d in diffs]):+.3f} (above 0: {above}/{len(diffs)}, below: {below}/{len(diffs)})"

    for (base, unfreeze), group in runs.groupby(["base", "unfreeze_blocks"], sort=False):
        what = "linear probe (frozen base)" if unfreeze == 0 else f"finetuned, last {unfreeze} blocks unfrozen"
        own = "(is the probe)" if unfreeze == 0 else versus(group["minus_linear_probe_roc_auc"])
        lines.append(f"| {base}: {what} | {cell(group['finetuned_balanced_accuracy'])} | {cell(group['finetuned_roc_auc'])} | "
                     f"{versus(group['minus_radial_profile_roc_auc'])} | {own} | {group['seconds'].median():.0f} s |")
    first = runs[runs["base"] == runs["base"].iloc[0]].drop_duplicates("seed")
    for method in ("radial_profile", "pixels", "constant"):
        lines.append(f"| baseline: {method.replace('_', ' ')} | {cell(first[f'{method}_balanced_accuracy'])} | {cell(first[f'{method}_roc_auc'])} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", nargs="+", default=["none", "demo", "demo128"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--unfreeze", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workdir", default=str(REPO / "benchmarks" / "finetune_bases"))
    parser.add_argument("--out", default=None, help="JSON file for every number (default: <workdir>/finetune_bases.json)")
    parser.add_argument("--catalog", help="another labelled catalog instead of the rings sample")
    parser.add_argument("--id-column", default="id_str")
    parser.add_argument("--file-column", default="file_loc")
    parser.add_argument("--label-column", default="label")
    args = parser.parse_args(argv)
    report = run(args)
    report["table"] = table(report)
    out = Path(args.out or Path(args.workdir) / "finetune_bases.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(report["table"])
    return report


if __name__ == "__main__":
    main()

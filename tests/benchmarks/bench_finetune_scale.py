"""`snakemake finetune` at growing sizes: per rule jobs, wall and CPU seconds and peak memory, against its request.

Run: `make bench-finetune-scale` (or `.venv/bin/python tests/benchmarks/bench_finetune_scale.py --n 1000 --n 4000
[--against DIR]`). For each --n, a labelled catalog of n galaxies and a survey of --survey-factor x n (bench_chain's
catalogs: the 104 real cutouts as hard links, each row its own id; labels alternate 0/1) are finetuned from random
weights at --size px and predicted, by this checkout and, with --against, another checkout's workflow and code, each
in its own directory, the whole command timed. Per rule: Snakemake's own benchmark files (wall s, CPU s, max RSS),
summed over a rule's jobs (max for memory), beside the rule's mem_mb request; jobs counted from the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml
from bench_chain import SAMPLE, make_catalog, with_repo

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench_finetune_scale")


def job_counts(output: str) -> Counter:
    """Jobs per rule that a Snakemake log says it started."""
    return Counter(m.group(1) for m in re.finditer(r"^(?:local)?rule (\w+):$", output, re.MULTILINE))


def requests(repo: Path) -> dict[str, int]:
    """mem_mb each finetuning rule asks for, read from the checkout's finetune.smk."""
    text = (repo / "workflow/rules/finetune.smk").read_text()
    found = {}
    for block in re.split(r"\n(?=rule |checkpoint )", text):
        name = re.match(r"(?:rule|checkpoint) (\w+):", block)
        mem = re.search(r"mem_mb=(\d+)", block)
        if name and mem:
            found[name.group(1)] = int(mem.group(1))
    return found


def per_rule(run_dir: Path) -> pd.DataFrame:
    """Snakemake's benchmark files of one run: per rule, jobs, summed wall and CPU seconds, and peak MB."""
    rows = []
    for tsv in (run_dir / "benchmarks").rglob("*.tsv"):
        table = pd.read_csv(tsv, sep="\t")
        parts = tsv.relative_to(run_dir / "benchmarks").parts
        rows.append({"file": "/".join(parts), "s": float(table["s"].iloc[0]), "cpu_s": float(table["cpu_time"].iloc[0]),
                     "max_rss_mb": float(table["max_rss"].iloc[0])})
    return pd.DataFrame(rows)


NAMES = {"write_shards": "write_finetune_shards", "resize_images": "resize_finetune_images"}  # chunk folders of benchmark files


def rule_of(file: str) -> str:
    """The rule a benchmark file belongs to, from its path (bench/finetune/[dataset/]<rule>[/chunk].tsv), with the dataset."""
    parts = file.split("/")[2:]
    if parts and parts[0] in ("labelled", "survey"):
        if len(parts) > 2:  # a chunk job's file
            return f"{NAMES.get(parts[1], parts[1])} ({parts[0]})"
        return "write_survey_shards (survey)" if parts[1] == "write_shards.tsv" else f"{parts[1].removesuffix('.tsv')} ({parts[0]})"
    return parts[0].removesuffix(".tsv") if parts else file


def run_side(repo: Path, run_dir: Path, cores: int) -> dict:
    """The whole `snakemake finetune` command in run_dir with repo's workflow and code."""
    started = time.perf_counter()
    cmd = [str(Path(sys.executable).parent / "snakemake"), "finetune", "--snakefile", str(repo / "workflow/Snakefile"), "--cores", str(cores),
           "--configfile", "config.yaml"]
    result = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, env=with_repo(repo))
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"snakemake finetune failed in {run_dir}:\n{result.stderr[-4000:]}")
    table = per_rule(run_dir)
    table["rule"] = table["file"].map(rule_of)
    summary = table.groupby("rule").agg(jobs=("s", "size"), s=("s", "sum"), cpu_s=("cpu_s", "sum"), max_rss_mb=("max_rss_mb", "max"))
    return {"seconds": seconds, "jobs": dict(job_counts(result.stdout + result.stderr)), "rules": summary.reset_index().to_dict("records")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="labelled galaxies (repeat for several sizes)")
    parser.add_argument("--survey-factor", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--against", type=Path, default=None, help="another checkout, run side by side")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = args.n or [1000, 4000]
    sides = {"ours": REPO, **({"before": args.against.resolve()} if args.against else {})}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_finetune_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"sizes": sizes, "size_px": args.size, "results": {}}
    lines = ["| n labelled / survey | side | rule | jobs | wall s | CPU s | peak MB | request MB |", "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        labelled = pd.read_csv(make_catalog(workdir, SAMPLE, n, "png", []))
        labelled["ring"] = labelled.index % 2
        survey = make_catalog(workdir, SAMPLE, n * args.survey_factor, "png", [])
        for name, repo in sides.items():
            run_dir = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{name}_{n}_"))
            labelled.to_csv(run_dir / "labelled.csv", index=False)
            config = {"run_name": "bench",
                      "finetune": {"base_model": "none", "catalog": str(run_dir / "labelled.csv"), "label_column": "ring", "image_size": args.size,
                                   "image_root": str(workdir), "max_quarantine_fraction": 0.0,
                                   "settings": {"task": "binary", "folds": 3, "inner_folds": 3, "batch_size": 64, "resize_size": 32},
                                   "survey": {"catalog": str(survey), "image_root": str(workdir)}}}
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
            figures = run_side(repo, run_dir, args.cores)
            figures["requests"] = requests(repo)
            report["results"][f"{n} {name}"] = figures
            log.info("n=%d %s: %.0f s, jobs %s", n, name, figures["seconds"], figures["jobs"])
            for row in figures["rules"]:
                base = row["rule"].split(" ")[0]
                lines.append(f"| {n:,} / {n * args.survey_factor:,} | {name} | {row['rule']} | {row['jobs']} | {row['s']:.1f} | {row['cpu_s']:.1f} | "
                             f"{row['max_rss_mb']:.0f} | {figures['requests'].get(base, '')} |")
            lines.append(f"| {n:,} / {n * args.survey_factor:,} | {name} | whole command | {sum(figures['jobs'].values())} | {figures['seconds']:.1f} | | | |")
    report["table"] = "\n".join(lines)
    print(report["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()

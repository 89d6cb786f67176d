"""`snakemake finetune` at growing sizes: per rule jobs, wall and CPU seconds and peak memory, against its request.

Run: `make bench-finetune-scale` (or `.venv/bin/python tests/benchmarks/bench_finetune_scale.py --n 1000 --n 4000
[--survey-n 4000 --survey-n 16000] [--against DIR] [--out results/bench_finetune_scale.json]`); `--tiny` is the
suite's size (60 labelled, a 60-galaxy survey, 2 folds, 2 inner folds: about 2 minutes on 2 cores).

For each --n, a labelled catalog of n distinct galaxies (distinct_catalog: each one of the 104 real cutouts of
../shared cropped at a random offset, perhaps mirrored, with noise, saved as JPEG at quality 90; label `ring` the
source cutout's row parity, flipped for a random 20%, seeded: learnable but noisy, as volunteers' labels are. Hard
links of 104 images would make the probe's features rank 104, and its weakly regularised logistic regressions iterate
for minutes each, a cost no real catalog has) and a survey of --survey-n galaxies (default 4 x n; bench_chain's
catalog: the 104 cutouts as hard links, each row its own id: prediction does not care; PNG, or with --survey-format jpg
quality-90 JPEG copies, as many surveys' cutouts are),
are finetuned at --size px from a base this pipeline trained (--base train, the default: the main chain on 800
synthetic galaxies at --size px for 4 epochs, once, by this checkout; a random-weight base's features are nearly
constant, ~1e-7 apart, so every probe's logistic regression iterates to its limit, 10 minutes a fold at 2,000
galaxies, a cost no trained base has) and predicted, by this checkout and, with
--against, another checkout's workflow and code (e.g. one from before issue 25: resize_finetune_images into PNG
chunk folders, gather, write_survey_shards; now write_finetune_shards writes each chunk's shards straight away and
predict_survey streams per shard), each side in its own directory, the sides alternating per size.

Recorded per side and size: the whole command's wall seconds; the DAG (a timed `snakemake finetune -n --quiet`
before the run: only up to the validation checkpoint, as the chunks are known after it) and the seconds from the
command's start to its first job's start (Snakemake's start-up and DAG); the seconds in which some job ran (scale.py's
busy_seconds) and the rest, Snakemake's own; jobs per rule from the log ('rule X:' / 'localrule X:'). Per rule
(summed over its jobs; memory the max): wall seconds (Snakemake's benchmark: file where the rule has one, else the
job process's own start-to-exit), exact CPU seconds and peak resident memory of the job's process and of its largest
worker (scale.py's getrusage hook, for every job, whether or not the rule has a benchmark: file), Snakemake's
benchmark CPU / max_rss where present (sampled: see scale.py), and the rule's mem_mb request from the checkout's
finetune.smk. With two or more sizes, each rule's peak-memory growth from the smallest to the largest size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chain import SAMPLE, make_catalog  # noqa: E402
from scale import RUSAGE_HOOK, busy_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench_finetune_scale")

# scale.py's hook (exact CPU and peak memory per job), plus each job process's start and exit times
WALL_HOOK = r'''
import time as _time
_started = _time.time()


def _report_wall():
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    import multiprocessing
    if type(job).__name__ != "Snakemake" or multiprocessing.parent_process() is not None:
        return
    with open(os.path.join(os.environ["ZOOBOT_RUSAGE_DIR"], f"{os.getpid()}.wall"), "w") as f:
        json.dump({"start": _started, "end": _time.time()}, f)


if os.environ.get("ZOOBOT_RUSAGE_DIR"):
    atexit.register(_report_wall)
'''

# benchmark file (relative to benchmarks/bench/finetune, without .tsv) -> the job name the hook gives
BENCH_RULES = {"write_shards": "write_finetune_shards", "resize_images": "resize_finetune_images"}


def job_counts(output: str) -> Counter:
    """Jobs per rule that a Snakemake log says it started."""
    return Counter(m.group(1) for m in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):$", output, re.MULTILINE))


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


def bench_job(tsv: Path, root: Path) -> str:
    """The hook's job name (rule/dataset/chunk) of a benchmark file under root (benchmarks/bench/finetune)."""
    parts = list(tsv.relative_to(root).with_suffix("").parts)
    if len(parts) == 3:  # {dataset}/write_shards|resize_images/chunk_{chunk}
        return f"{BENCH_RULES[parts[1]]}/{parts[0]}/{parts[2].removeprefix('chunk_')}"
    if parts == ["survey", "write_shards"]:  # before issue 25: the survey's one shard job
        return "write_survey_shards"
    return "/".join(parts)


def rule_key(job: str) -> str:
    """A job's row in the table: its rule, with the dataset for rules that run once per catalog."""
    parts = job.split("/")
    return f"{parts[0]} ({parts[1]})" if len(parts) > 1 and parts[1] in ("labelled", "survey") else parts[0]


def job_table(run_dir: Path, rusage_dir: Path) -> pd.DataFrame:
    """One row per job: the hook's exact figures and process times, joined with Snakemake's benchmark file if any."""
    rows = []
    for record in sorted(rusage_dir.glob("*.json")):
        figures = json.loads(record.read_text())
        wall = record.with_suffix(".wall")
        times = json.loads(wall.read_text()) if wall.exists() else {"start": float("nan"), "end": float("nan")}
        rows.append({**figures, **times})
    jobs = pd.DataFrame(rows, columns=["job", "cpu_s", "peak_mb", "worker_peak_mb", "start", "end"])
    if jobs["job"].duplicated().any():
        raise RuntimeError(f"Two processes reported as the same job: {sorted(jobs.loc[jobs['job'].duplicated(), 'job'])}")
    root = run_dir / "benchmarks/bench/finetune"
    bench = pd.DataFrame([{"job": bench_job(tsv, root), **pd.read_csv(tsv, sep="\t").iloc[0][["s", "cpu_time", "max_rss"]].to_dict()}
                          for tsv in sorted(root.rglob("*.tsv"))], columns=["job", "s", "cpu_time", "max_rss"])
    jobs = jobs.merge(bench, on="job", how="outer")
    jobs["process_s"] = jobs["end"] - jobs["start"]
    jobs["wall_s"] = jobs["s"].fillna(jobs["process_s"])  # Snakemake's benchmark where the rule has one
    jobs["rule"] = jobs["job"].map(rule_key)
    return jobs


def per_rule(jobs: pd.DataFrame, counts: Counter, mem_requests: dict[str, int]) -> list[dict]:
    """Per rule: jobs (the log's count per rule name), summed seconds, max memory, the request."""
    summary = jobs.groupby("rule", sort=False).agg(
        reported=("job", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), peak_mb=("peak_mb", "max"),
        worker_peak_mb=("worker_peak_mb", "max"), bench_cpu_s=("cpu_time", lambda c: c.sum(min_count=1)),
        bench_max_rss_mb=("max_rss", "max"), first_start=("start", "min"))
    rows = []
    for rule, row in summary.sort_values("first_start").iterrows():
        base = rule.split(" ")[0]
        rows.append({"rule": rule, "jobs": int(row["reported"]), "jobs_in_log_for_rule": counts.get(base, 0),
                     **{k: (None if pd.isna(row[k]) else round(float(row[k]), 2))
                        for k in ("wall_s", "cpu_s", "peak_mb", "worker_peak_mb", "bench_cpu_s", "bench_max_rss_mb")},
                     "request_mb": mem_requests.get(base)})
    return rows


def run_side(repo: Path, run_dir: Path, cores: int) -> dict:
    """The whole `snakemake finetune` command in run_dir with repo's workflow and code, every job reporting itself."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "finetune", "--snakefile", str(repo / "workflow/Snakefile"),
           "--configfile", "config.yaml"]
    hook = run_dir / "rusage_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(RUSAGE_HOOK + WALL_HOOK)
    rusage_dir = run_dir / "rusage"
    rusage_dir.mkdir(exist_ok=True)
    env = {**os.environ, "ZOOBOT_RUSAGE_DIR": str(rusage_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), str(repo), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    dry = subprocess.run([*cmd, "-n", "--quiet"], cwd=run_dir, capture_output=True, text=True, env=env)
    dag_s = time.perf_counter() - started
    if dry.returncode:
        raise RuntimeError(f"snakemake finetune -n failed in {run_dir}:\n{dry.stdout[-3000:]}\n{dry.stderr[-3000:]}")
    started, started_epoch = time.perf_counter(), time.time()
    result = subprocess.run([*cmd, "--cores", str(cores)], cwd=run_dir, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    (run_dir / "snakemake.log").write_text(result.stdout + result.stderr)
    if result.returncode:
        raise RuntimeError(f"snakemake finetune failed in {run_dir}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    counts = job_counts(result.stdout + result.stderr)
    jobs = job_table(run_dir, rusage_dir)
    timed = jobs.dropna(subset=["start", "end"]).assign(wall_s=lambda t: t["process_s"])
    busy = busy_seconds(timed) if len(timed) else 0.0
    return {"command_s": round(seconds, 1), "dag_dry_run_s": round(dag_s, 2),
            "to_first_job_s": round(float(jobs["start"].min() - started_epoch), 2), "jobs_busy_s": round(busy, 1),
            "snakemake_own_s": round(seconds - busy, 1), "jobs": dict(counts), "total_jobs": sum(counts.values()),
            "rules": per_rule(jobs, counts, requests(repo)),
            "per_job": jobs.drop(columns=["start", "end"]).round(3).to_dict("records")}


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def side_table(n: int, survey_n: int, name: str, f: dict) -> str:
    lines = [f"**{name}, {n:,} labelled / {survey_n:,} survey galaxies:** whole command {f['command_s']:.1f} s, "
             f"{f['total_jobs']} jobs; DAG dry run {f['dag_dry_run_s']:.1f} s; first job after {f['to_first_job_s']:.1f} s; "
             f"some job running {f['jobs_busy_s']:.1f} s, Snakemake's own {f['snakemake_own_s']:.1f} s", "",
             "| rule | jobs | wall s | CPU s | peak MB (process / largest worker) | benchmark file CPU s / max_rss MB | request MB |",
             "|---|---|---|---|---|---|---|"]
    for r in f["rules"]:
        worker = fmt(r["worker_peak_mb"], ",.0f") if r["worker_peak_mb"] else "-"
        lines.append(f"| {r['rule']} | {r['jobs']} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | {fmt(r['peak_mb'], ',.0f')} / {worker} | "
                     f"{fmt(r['bench_cpu_s'])} / {fmt(r['bench_max_rss_mb'], ',.0f')} | {fmt(r['request_mb'], 'd')} |")
    return "\n".join(lines)


def growth(results: dict, sizes: list[int], sides: list[str]) -> tuple[dict, str]:
    """Per side and rule, the peak memory (process, largest worker) at the largest size over that at the smallest."""
    lo, hi = min(sizes), max(sizes)
    ratios, lines = {}, [f"| side | rule | peak MB at {lo:,} | peak MB at {hi:,} | growth ({hi // lo}x galaxies) | largest worker growth |",
                         "|---|---|---|---|---|---|"]
    for name in sides:
        small = {r["rule"]: r for r in results[f"{lo} {name}"]["rules"]}
        large = {r["rule"]: r for r in results[f"{hi} {name}"]["rules"]}
        for rule in [r for r in large if r in small]:
            a, b = small[rule], large[rule]
            ratio = b["peak_mb"] / a["peak_mb"] if a["peak_mb"] and b["peak_mb"] else None
            worker = b["worker_peak_mb"] / a["worker_peak_mb"] if a["worker_peak_mb"] and b["worker_peak_mb"] else None
            ratios[f"{name} {rule}"] = {"peak": ratio, "worker_peak": worker}
            lines.append(f"| {name} | {rule} | {fmt(a['peak_mb'], ',.0f')} | {fmt(b['peak_mb'], ',.0f')} | {fmt(ratio, '.2f')} | {fmt(worker, '.2f')} |")
    return ratios, "\n".join(lines)


def train_base(folder: Path, size: int, cores: int, galaxies: int = 800, epochs: int = 4) -> Path:
    """A base for finetuning as a user would have one: this checkout's main chain trained on `galaxies` synthetic
    galaxies at `size` px for `epochs` epochs (kept in `folder`: a rerun reuses it)."""
    model = folder / "results/base/model/model.keras"
    if not model.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        config = {"run_name": "base", "synthetic": {"enabled": True, "n_galaxies": galaxies, "image_size": 64}, "images": {"size": size},
                  "train": {"epochs": epochs, "resize_size": max(size, 32), "tensorboard": False}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [str(Path(sys.executable).parent / "snakemake"), str(model.relative_to(folder)), "--snakefile", str(REPO / "workflow/Snakefile"),
               "--cores", str(cores), "--configfile", "config.yaml"]
        result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"Training the base failed in {folder}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return model


def _jittered(task: tuple[str, str, int]) -> None:
    """One distinct galaxy: the source cropped to 400 px at a random offset, mirrored half the time, with noise; JPEG q90."""
    import numpy as np
    from PIL import Image

    source, target, seed = task
    rng = np.random.default_rng(seed)
    with Image.open(source) as img:
        rgb = np.asarray(img.convert("RGB"), np.float32)
    top, left = rng.integers(0, rgb.shape[0] - 400 + 1, 2)
    crop = rgb[top : top + 400, left : left + 400]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    noisy = np.clip(crop + rng.normal(0, 3, crop.shape), 0, 255).astype(np.uint8)
    partial = f"{target}.part"
    Image.fromarray(noisy).save(partial, format="JPEG", quality=90)
    os.replace(partial, target)  # whole or absent: a stopped run leaves no truncated image to be reused


def distinct_catalog(workdir: Path, sample: Path, n: int, workers: int = 2) -> pd.DataFrame:
    """An n-row catalog of distinct galaxy images made from the real cutouts (_jittered; kept in workdir, reused):
    id_str, file_loc, and `source` (which cutout it came from)."""
    from concurrent.futures import ProcessPoolExecutor

    sources = sorted(sample.glob("*.png"))
    folder = workdir / f"distinct_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(f"d{i:06d}", str(folder / f"d{i:06d}.jpg"), i % len(sources)) for i in range(n)]
    todo = [(str(sources[s]), path, i) for i, (_, path, s) in enumerate(rows) if not Path(path).exists()]
    if todo:
        log.info("Making %d distinct galaxy images in %s", len(todo), folder)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_jittered, todo, chunksize=256))
    return pd.DataFrame(rows, columns=["id_str", "file_loc", "source"])


def noisy_labels(n: int, flipped: float = 0.2, seed: int = 0, sources=None):
    """The source cutout's row parity (a property of the image; by default row % 2), a random `flipped` of them flipped."""
    import numpy as np

    parity = (np.arange(n) if sources is None else np.asarray(sources)) % 2
    return parity ^ (np.random.default_rng(seed).random(n) < flipped).astype(int)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="labelled galaxies (repeatable; default 2000 and 8000)")
    parser.add_argument("--survey-n", type=int, action="append", help="survey galaxies, one per --n in order (default 4 x n)")
    parser.add_argument("--size", type=int, default=32, help="finetune.image_size")
    parser.add_argument("--chunk-size", type=int, default=None, help="images.chunk_size (default: the workflow's)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unfreeze-blocks", type=int, default=0, help="finetune.settings.unfreeze_blocks (with unfreeze_epochs 2)")
    parser.add_argument("--base", default="train", help="'train' (a pipeline base trained here, once), 'none' (random weights) or a .keras path")
    parser.add_argument("--survey-format", default="png", choices=["png", "jpg"],
                        help="the survey's files: the real PNG cutouts as hard links, or quality-90 JPEG copies (JPEG decodes ~5x faster)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the suite's size: 60 labelled, 60 survey, 2 folds, 2 inner folds")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder of 424 px PNG cutouts (default: the real sample)")
    parser.add_argument("--against", type=Path, default=None, help="another checkout, run side by side (e.g. one before issue 25)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures and the tables as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.survey_n, args.folds, args.inner_folds = args.n or [60], args.survey_n or [60], 2, 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = args.n or [2000, 8000]
    surveys = args.survey_n or [4 * n for n in sizes]
    if len(surveys) != len(sizes):
        parser.error("give one --survey-n per --n (or none)")
    sides = {"ours": REPO, **({"against": args.against.resolve()} if args.against else {})}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_finetune_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    base = args.base
    if args.base == "train":  # the suite's tiny run trains a smaller base
        base = train_base(workdir / "base", args.size, args.cores, *((150, 1) if args.tiny else (800, 4)))
    settings = {"task": "binary", "folds": args.folds, "inner_folds": args.inner_folds, "batch_size": args.batch_size,
                # the crop (0.75) of a 32 px image is below the random-weight base's 32 px minimum: resized back up to --size
                "resize_size": max(args.size, 32)}
    if args.unfreeze_blocks:
        settings.update(unfreeze_blocks=args.unfreeze_blocks, unfreeze_epochs=2)
    report: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "sizes": [{"n": n, "survey_n": s} for n, s in zip(sizes, surveys)], "sides": {k: str(v) for k, v in sides.items()},
                    "finetune_settings": settings, "results": {}}
    tables = []
    for n, survey_n in zip(sizes, surveys):
        labelled = distinct_catalog(workdir, args.sample, n, args.cores)
        labelled["ring"] = noisy_labels(len(labelled), sources=labelled.pop("source").to_numpy())
        (workdir / "survey").mkdir(exist_ok=True)
        survey = make_catalog(workdir / "survey", args.sample, survey_n, args.survey_format, [])
        for name, repo in sides.items():
            run_dir = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{name}_{n}_"))
            labelled.to_csv(run_dir / "labelled.csv", index=False)
            config = {"run_name": "bench", "images": {"chunk_size": args.chunk_size} if args.chunk_size else {},
                      "finetune": {"base_model": str(base), "catalog": str(run_dir / "labelled.csv"), "label_column": "ring", "image_size": args.size,
                                   "image_root": str(workdir), "max_quarantine_fraction": 0.0, "settings": settings,
                                   "survey": {"catalog": str(survey), "image_root": str(workdir)}}}
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
            log.info("n=%d survey=%d %s: running in %s", n, survey_n, name, run_dir)
            figures = {"n": n, "survey_n": survey_n, "run_dir": str(run_dir), **run_side(repo, run_dir, args.cores)}
            report["results"][f"{n} {name}"] = figures
            log.info("n=%d %s: %.0f s, jobs %s", n, name, figures["command_s"], figures["jobs"])
            tables.append(side_table(n, survey_n, name, figures))
            save(report, tables, args.out)  # after every side: a long run stopped part-way keeps what it measured
    if len(sizes) > 1:
        report["peak_growth"], growth_table = growth(report["results"], sizes, list(sides))
        tables.append(growth_table)
    save(report, tables, args.out)
    print(report["table"])
    return report


def save(report: dict, tables: list[str], out: Path | None) -> None:
    """The report with its tables so far, written to `out` (if given) atomically."""
    report["table"] = "\n\n".join(tables)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(out)


if __name__ == "__main__":
    main()

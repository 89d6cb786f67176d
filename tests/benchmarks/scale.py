"""The workflow at survey scale: an N-row catalog (default 300,000) of real cutouts, run with the user's command,
recording every rule's wall time, CPU time and peak memory (Snakemake's benchmark: files) and Snakemake's own
overhead (DAG build, the gaps between jobs).

Snakemake's benchmark files sample a job every 0.5 s for its first 15 s, then every 30 s, and report the CPU time
and memory of the last sample: a 44 s job shows the CPU of its first 15 s, and a memory peak between two samples
is missed. So every job also reports its own exact figures as it exits (getrusage, through a sitecustomize hook
that only this script installs): CPU seconds of the job's process and its workers, and the peak resident memory
of the job's process and of its largest worker.

Run: `make scale` (or `.venv/bin/python tests/benchmarks/scale.py --n 300000 --until all`).
Each row is its own id and file: hard links to the real sample's cutouts (../shared; JPEG quality-90 copies by
default, as DECaLS cutouts are JPEG), else synthetic galaxies. Small images (--size, 32 px) keep a CPU run to
tens of minutes; --until picks the last rule (default gather_images: validation, the
images into shards and the ready catalog; `all` runs training, prediction and clustering too: 18 minutes at 300k
on 2 cores, with one epoch and one prediction per galaxy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chain import REPO, SAMPLE, make_catalog, with_repo  # noqa: E402

log = logging.getLogger("scale")


RUSAGE_HOOK = r'''
"""Installed by tests/benchmarks/scale.py for its runs only: a Snakemake script job writes its exact CPU time and
peak memory (getrusage; the process's own peak from /proc/self/status) to $ZOOBOT_RUSAGE_DIR as it exits.
Workers' peak (RUSAGE_CHILDREN) counts the pages a forked worker shares with the job's process too."""
import atexit, json, os, resource, sys


def _own_peak_mb(me) -> float:
    """This process's own peak resident memory: Linux's VmHWM (reset at exec). ru_maxrss is not: Linux carries the
    parent's resident size at the fork into it, so a small job started by a 250 MB Snakemake read 250 MB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return me.ru_maxrss / 1024


def _report():
    import multiprocessing
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    if type(job).__name__ != "Snakemake" or multiprocessing.parent_process() is not None:  # a job's own process only
        return
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    name = "/".join([job.rule, *(str(v) for k, v in job.wildcards.items() if k != "run")])
    record = {"job": name, "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
              "peak_mb": _own_peak_mb(me), "worker_peak_mb": kids.ru_maxrss / 1024}
    with open(os.path.join(os.environ["ZOOBOT_RUSAGE_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(record, f)


if os.environ.get("ZOOBOT_RUSAGE_DIR"):
    atexit.register(_report)
'''


def snakemake(run_dir: Path, *args: str, rusage_dir: Path | None = None) -> tuple[float, str]:
    """Run snakemake in run_dir with the run's config; (wall seconds, what it printed). With `rusage_dir`, every
    job writes its exact CPU time and peak memory there as it exits (RUSAGE_HOOK)."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "workflow/Snakefile"), "--configfile", "config.yaml", *args]
    env = None
    if rusage_dir is not None:
        hook = run_dir / "rusage_hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(RUSAGE_HOOK)
        rusage_dir.mkdir(parents=True, exist_ok=True)
        env = {**with_repo(hook), "ZOOBOT_RUSAGE_DIR": str(rusage_dir)}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return seconds, result.stdout + result.stderr


def rule_table(run_dir: Path, since: float = 0.0) -> pd.DataFrame:
    """One row per job from Snakemake's benchmark files written after `since` (a time.time(): the files of jobs an
    earlier command ran in a reused directory are left out): rule, wall s, CPU s, peak memory (max_rss, MB), and
    when it ended (the file's modification time, written as the job ends)."""
    rows = []
    for tsv in sorted((run_dir / "benchmarks").rglob("*.tsv")):
        if tsv.stat().st_mtime < since:
            continue
        bench = pd.read_csv(tsv, sep="\t").iloc[0]
        job = str(tsv.relative_to(run_dir / "benchmarks/scale").with_suffix("")).replace("/chunk_", "/")  # write_shards/<chunk>, as the hook names it
        rows.append({"job": job, "wall_s": bench["s"],
                     "cpu_s": bench["cpu_time"], "max_rss_mb": bench["max_rss"], "end": tsv.stat().st_mtime})
    return pd.DataFrame(rows)


def exact_figures(table: pd.DataFrame, rusage_dir: Path) -> pd.DataFrame:
    """The rule table with each job's own getrusage figures joined on (RUSAGE_HOOK): exact CPU seconds (process and
    workers), peak MB of its process and of its largest worker. Jobs that wrote none (not a Python script) get NaN."""
    records = pd.DataFrame([json.loads(p.read_text()) for p in sorted(rusage_dir.glob("*.json"))], columns=["job", "cpu_s", "peak_mb", "worker_peak_mb"])
    records = records.rename(columns={"cpu_s": "exact_cpu_s"})
    if records["job"].duplicated().any():
        raise RuntimeError(f"Two processes reported as the same job: {sorted(records.loc[records['job'].duplicated(), 'job'])}")
    return table.merge(records, on="job", how="left")


def busy_seconds(table: pd.DataFrame) -> float:
    """Seconds in which at least one job ran: the union of the jobs' [end - wall, end] intervals (jobs that overlap,
    such as calibration beside gather_images, count once), so that the command's wall time minus this is Snakemake's own."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(zip(table["end"] - table["wall_s"], table["end"])):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--format", default="jpg", choices=["jpg", "png"])
    parser.add_argument("--until", default="gather_images", help="the last rule to run ('all': the whole workflow)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from zoobot_core.schemas import get_tree

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    catalog = make_catalog(workdir, args.sample, args.n, args.format, list(get_tree("gz_decals_dr5").label_cols))
    log.info("Catalog of %d rows in %.0f s: %s", args.n, time.perf_counter() - start, catalog)
    run_dir = workdir / f"run_{args.n}"
    run_dir.mkdir(exist_ok=True)
    config = {"run_name": "scale", "synthetic": {"enabled": False}, "catalog": {"path": str(catalog)}, "images": {"size": args.size},
              "shards": {"shard_size": 4096}, "train": {"epochs": 1, "crop_fraction": 1.0},
              "predict": {"n_samples": 1, "splits": ["train", "val", "test", "unlabelled"]}, "cluster": {"query_ids": []}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    # --until with a checkpoint upstream (validation, after which the shard chunks are known) stops at the checkpoint
    # in Snakemake 9 (snakemake/snakemake#823): ask for the rule's outputs instead
    target = {"all": ["all"], "gather_images": ["results/scale/catalog/ready.parquet", "results/scale/shards/shards.json"]}.get(args.until, ["all", "--until", args.until])
    dag_s, _ = snakemake(run_dir, "-n", "--quiet", "all")  # before anything ran: the whole DAG, from the catalog alone
    since = time.time()
    rusage_dir = Path(tempfile.mkdtemp(dir=run_dir, prefix="rusage_"))
    wall_s, _ = snakemake(run_dir, "--cores", str(args.cores), *target, rusage_dir=rusage_dir)
    table = exact_figures(rule_table(run_dir, since), rusage_dir)
    jobs_s = busy_seconds(table)
    summary = {"n": args.n, "size": args.size, "input": args.format, "until": args.until, "dag_dry_run_s": round(dag_s, 2),
               "command_s": round(wall_s, 1), "jobs_busy_s": round(jobs_s, 1), "overhead_s": round(wall_s - jobs_s, 1),
               "jobs": table.drop(columns="end").round(2).to_dict("records")}
    print(f"\n{args.n:,} galaxies ({args.format} -> {args.size} px), `snakemake --cores {args.cores}` until {args.until}: "
          f"{wall_s:.0f} s; the DAG dry-run {dag_s:.1f} s; some job running {jobs_s:.0f} s; Snakemake's own share {wall_s - jobs_s:.0f} s\n")
    print("| job | wall s | CPU s | peak memory MB (process / largest worker) | Snakemake's benchmark file: CPU s / max_rss MB |\n"
          "|---|---|---|---|---|")
    for row in table.itertuples():
        workers = f"{row.worker_peak_mb:,.0f}" if row.worker_peak_mb > 0 else "-"
        print(f"| {row.job} | {row.wall_s:.1f} | {row.exact_cpu_s:.1f} | {row.peak_mb:,.0f} / {workers} | "
              f"{row.cpu_s:.1f} / {row.max_rss_mb:,.0f} |")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

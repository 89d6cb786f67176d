"""Adding galaxies to a catalog: what the rerun costs, whole command against whole command.

--chain finetune (the default): a finetuning catalog, the command `snakemake <its ready catalog>`; --chain main: the
main catalog with Galaxy Zoo votes, `snakemake <the ready catalog> <the shards' shards.json>` (validate, the shard
jobs, combine and gather: the shards as training reads them; a design before chunks has no combine rule, its
write_shards folder comes with the ready catalog), and instead of every label changed, --add galaxies' votes
corrected (the main chain's shards hold the votes).

Run: `make bench-rerun` (or `.venv/bin/python tests/benchmarks/bench_rerun.py --n 3000 --n 30000 --against DIR`).
For each catalog size, each side (this checkout; --against another checkout, e.g. one from before chunks
followed a hash of the id) runs `snakemake results/bench/finetune/labelled/catalog/ready.parquet` (validate,
resize in chunks, gather) in its own directory, then, --repeats times in alternation with the other side, adds
--add galaxies to its catalog and reruns the same command; then changes every label and reruns once more. Each
rerun's wall seconds (Snakemake start-up, every job and its imports included) and resize jobs are recorded.
The catalog is bench_chain's: the real sample (../shared) repeated as hard links, JPEG copies at quality 90.
Within one side the first run is the baseline: what any catalog edit cost when every chunk reran.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from bench_chain import SAMPLE, make_catalog, with_repo

REPO = Path(__file__).resolve().parents[2]
TARGET = "results/bench/finetune/labelled/catalog/ready.parquet"
MAIN_READY = "results/bench/catalog/ready.parquet"
log = logging.getLogger("bench_rerun")


def resize_jobs(output: str, rules: tuple[str, ...] = ("write_finetune_shards", "resize_finetune_images")) -> int:
    """How many chunk jobs (of `rules`: by default a finetuning catalog's, write_finetune_shards, or
    resize_finetune_images before issue 25) a Snakemake run's log says it started."""
    return sum(line.strip() in {f"{kind} {r}:" for r in rules for kind in ("rule", "localrule")} for line in output.splitlines())


def targets(repo: Path, chain: str) -> list[str]:
    """What the command asks for: the finetuning catalog's ready catalog, or the main catalog's ready catalog and (in a
    design with chunks, which has combine_shards) its shards' shards.json."""
    if chain == "finetune":
        return [TARGET]
    chunked = "combine_shards" in (repo / "workflow/rules/images.smk").read_text()
    return [MAIN_READY, *(["results/bench/shards/shards.json"] if chunked else [])]


def run(repo: Path, run_dir: Path, cores: int, chain: str = "finetune") -> tuple[float, int]:
    """The whole command with `repo`'s workflow and code in `run_dir`: (wall seconds, shard or resize jobs)."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), *targets(repo, chain), "--snakefile", str(repo / "workflow/Snakefile"), "--cores", str(cores),
           "--configfile", "config.yaml"]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, env=with_repo(repo))
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{repo}'s workflow failed in {run_dir}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    log_text = result.stdout + result.stderr
    return seconds, resize_jobs(log_text) if chain == "finetune" else resize_jobs(log_text, ("write_shards",))


def add_galaxies(catalog: Path, k: int) -> None:
    """Append k galaxies to a catalog: new ids, each a new hard link of an image the catalog already has."""
    table = pd.read_csv(catalog)
    start = len(table)
    new = table.iloc[[i % start for i in range(k)]].copy()
    new["id_str"] = [f"added{start + i:06d}" for i in range(k)]
    paths = []
    for source, id_str in zip(new["file_loc"], new["id_str"]):
        path = Path(source).with_name(f"{id_str}{Path(source).suffix}")
        if not path.exists():
            path.hardlink_to(source)
        paths.append(str(path))
    new["file_loc"] = paths
    pd.concat([table, new], ignore_index=True).to_csv(catalog, index=False)


def flip_labels(catalog: Path) -> None:
    """Every galaxy's label changed, nothing else."""
    table = pd.read_csv(catalog)
    table["ring"] = 1 - table["ring"]
    table.to_csv(catalog, index=False)


def correct_votes(catalog: Path, k: int, vote_cols: list[str]) -> None:
    """k galaxies' votes corrected (one more vote for each answer), nothing else."""
    table = pd.read_csv(catalog)
    table.loc[table.index[:: max(1, len(table) // k)][:k], vote_cols] += 1
    table.to_csv(catalog, index=False)


def bench_size(n: int, sides: dict[str, Path], args: argparse.Namespace, workdir: Path) -> dict:
    """One catalog size, every side: the first run, --repeats additions of --add galaxies, one change of labels."""
    from zoobot_core.schemas import get_tree

    vote_cols = list(get_tree("gz_decals_dr5").label_cols)
    template = make_catalog(workdir, args.sample, n, args.format, ["ring"] if args.chain == "finetune" else vote_cols)
    table = pd.read_csv(template)
    if args.chain == "finetune":
        table["ring"] = table["ring"] % 2
    dirs = {}
    for name in sides:
        run_dir = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{name}_{n}_"))
        table.to_csv(run_dir / "catalog.csv", index=False)
        if args.chain == "finetune":
            config = {"run_name": "bench", "images": {"chunk_size": args.chunk_size} if args.chunk_size else {},
                      "finetune": {"base_model": "none", "catalog": str(run_dir / "catalog.csv"), "label_column": "ring", "image_size": args.size,
                                   "image_root": str(workdir), "max_quarantine_fraction": 0.0}}
        else:
            config = {"run_name": "bench", "synthetic": {"enabled": False}, "images": {"size": args.size, **({"chunk_size": args.chunk_size} if args.chunk_size else {})},
                      "catalog": {"path": str(run_dir / "catalog.csv"), "image_root": str(workdir)}}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        dirs[name] = run_dir
    figures = {name: {"first_s": 0.0, "first_jobs": 0, "add_s": [], "add_jobs": [], "labels_s": 0.0, "labels_jobs": 0} for name in sides}
    for name, repo in sides.items():
        figures[name]["first_s"], figures[name]["first_jobs"] = run(repo, dirs[name], args.cores, args.chain)
        log.info("n=%d %s: first run %.1f s, %d resize jobs", n, name, figures[name]["first_s"], figures[name]["first_jobs"])
    for repeat in range(args.repeats):
        for name, repo in sides.items():
            add_galaxies(dirs[name] / "catalog.csv", args.add)
            seconds, jobs = run(repo, dirs[name], args.cores, args.chain)
            figures[name]["add_s"].append(seconds)
            figures[name]["add_jobs"].append(jobs)
            log.info("n=%d %s: +%d galaxies (%d of %d) %.1f s, %d resize jobs", n, name, args.add, repeat + 1, args.repeats, seconds, jobs)
    for name, repo in sides.items():
        if args.chain == "finetune":
            flip_labels(dirs[name] / "catalog.csv")
        else:
            correct_votes(dirs[name] / "catalog.csv", args.add, vote_cols)
        figures[name]["labels_s"], figures[name]["labels_jobs"] = run(repo, dirs[name], args.cores, args.chain)
        log.info("n=%d %s: labels changed %.1f s, %d resize jobs", n, name, figures[name]["labels_s"], figures[name]["labels_jobs"])
    for name in sides:
        figures[name]["add_median_s"] = statistics.median(figures[name]["add_s"])
    return figures


def table(results: dict[int, dict], add: int, chain: str = "finetune") -> str:
    """Markdown: per size and side, the first run and each kind of rerun (median seconds, resize jobs)."""
    edit = "labels changed" if chain == "finetune" else f"{add} galaxies' votes corrected"
    lines = [f"| galaxies | side | first run | + {add} galaxies (median) | {edit} | first run / + {add} |", "|---|---|---|---|---|---|"]
    for n, sides in results.items():
        for name, f in sides.items():
            lines.append(f"| {n:,} | {name} | {f['first_s']:.1f} s, {f['first_jobs']} resize jobs | {f['add_median_s']:.1f} s, "
                         f"{statistics.median(f['add_jobs']):g} resize jobs | {f['labels_s']:.1f} s, {f['labels_jobs']} resize jobs | "
                         f"{f['first_s'] / f['add_median_s']:.2f}x |")
        if "against" in sides:
            ratio = sides["against"]["add_median_s"] / sides["ours"]["add_median_s"]
            lines.append(f"| {n:,} | against / ours | | {ratio:.2f}x | {sides['against']['labels_s'] / sides['ours']['labels_s']:.2f}x | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="catalog rows (repeatable; default 3000)")
    parser.add_argument("--add", type=int, default=10, help="galaxies added per rerun")
    parser.add_argument("--repeats", type=int, default=3, help="additions (reruns) per side")
    parser.add_argument("--format", default="jpg", choices=["jpg", "png"])
    parser.add_argument("--size", type=int, default=224, help="finetune.image_size")
    parser.add_argument("--chunk-size", type=int, default=None, help="images.chunk_size (default: the workflow's)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder of 424 px PNG cutouts (default: the real sample)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--against", type=Path, default=None, help="another checkout to run side by side (a before/after)")
    parser.add_argument("--chain", default="finetune", choices=["finetune", "main"], help="a finetuning catalog, or the main catalog with votes")
    parser.add_argument("--out", type=Path, default=None, help="write the figures and the table as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_rerun_"))
    workdir.mkdir(parents=True, exist_ok=True)
    sides = {"ours": REPO, **({"against": args.against.resolve()} if args.against else {})}
    results = {n: bench_size(n, sides, args, workdir) for n in args.n or [3000]}
    report = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results, "table": table(results, args.add, args.chain)}
    print(report["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

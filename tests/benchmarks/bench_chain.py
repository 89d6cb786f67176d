"""Images to TFRecord shards, whole command against whole command: Zoobot's one-process loop vs
`snakemake shards` (validation, the shard jobs, combining and gathering: the shards as training reads them;
Snakemake start-up, every job's start-up and imports included; asked for by their files, which a checkout from
before chunks has too).

Run: `make bench-chain` (or `.venv/bin/python tests/benchmarks/bench_chain.py --n 3000 --n 30000 --cpu-split`).
--cpu-split also times the write_shards job's work alone (in one fresh process) and splits its CPU per image
between the job's main process and its worker processes. --against DIR runs another checkout's side too (a before/after).
The catalog is the real sample (../shared, 424 px PNG cutouts; JPEG inputs are quality-90 copies),
repeated to N rows as hard links (each row its own id and path; the page cache helps both sides alike),
else synthetic 424 px galaxies. Zoobot's loop (v0.0.3 shards): one process opens each image, resizes
it (LANCZOS), and writes its raw uint8 matrix with the id and labels as one tf.train.Example, 4096 per
shard. Both sides run as fresh processes, timed from start to exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared/data/gz_decals_rings_sample/images"
log = logging.getLogger("bench_chain")

ZOOBOT_LOOP = r'''
import sys, numpy as np, pandas as pd, tensorflow as tf
from PIL import Image
catalog, out_dir, size = pd.read_csv(sys.argv[1]), sys.argv[2], int(sys.argv[3])
label_cols = [c for c in catalog.columns if c not in ("id_str", "file_loc")]
writer, shard = None, 0
for i, row in enumerate(catalog.to_dict("records")):
    if i % 4096 == 0:
        if writer: writer.close()
        writer, shard = tf.io.TFRecordWriter(f"{out_dir}/s_{shard}.tfrecord"), shard + 1
    matrix = np.array(Image.open(row["file_loc"]).resize((size, size), Image.LANCZOS), dtype=np.uint8)
    feature = {"id_str": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["id_str"].encode()])),
               "matrix": tf.train.Feature(bytes_list=tf.train.BytesList(value=[matrix.tobytes()]))}
    feature.update({c: tf.train.Feature(float_list=tf.train.FloatList(value=[float(row[c])])) for c in label_cols})
    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
writer.close()
'''


def sources(workdir: Path, sample: Path) -> list[Path]:
    """424 px PNG cutouts: the real sample, or synthetic galaxies where it is absent."""
    pngs = sorted(sample.glob("*.png"))
    if pngs:
        return pngs
    from zoobot_core.synthetic import draw_morphology, render_galaxy

    for i in range(32):
        rng = np.random.default_rng([0, i])
        Image.fromarray(render_galaxy(draw_morphology(rng), 424, rng)).save(workdir / f"syn{i}.png")
    return sorted(workdir.glob("syn*.png"))


def make_catalog(workdir: Path, sample: Path, n: int, fmt: str, label_cols: list[str]) -> Path:
    """An n-row catalog of fmt ('png' or 'jpg') cutouts, each row its own id and hard-linked file, random votes."""
    base = workdir / f"sources_{fmt}"
    base.mkdir(exist_ok=True)
    originals = []
    for p in sources(workdir, sample):
        target = base / f"{p.stem}.{fmt}"
        if not target.exists():
            if fmt == "png":
                os.link(p, target) if p.stat().st_dev == base.stat().st_dev else target.write_bytes(p.read_bytes())
            else:
                Image.open(p).convert("RGB").save(target, quality=90)
        originals.append(target)
    images = workdir / f"images_{fmt}_{n}"
    images.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        path = images / f"g{i:06d}.{fmt}"
        if not path.exists():
            os.link(originals[i % len(originals)], path)
        rows.append((f"g{i:06d}", str(path)))
    catalog = pd.DataFrame(rows, columns=["id_str", "file_loc"])
    votes = np.random.default_rng(0).integers(0, 20, (n, len(label_cols)))
    catalog = pd.concat([catalog, pd.DataFrame(votes, columns=label_cols)], axis=1)
    path = workdir / f"catalog_{fmt}_{n}.csv"
    catalog.to_csv(path, index=False)
    return path


def psnr_against_zoobot(workdir: Path, fmt: str, size: int, images: dict) -> float:
    """Median PSNR (dB) over the source cutouts of the pixels ours stores (images.load_rgb with the job's draft
    and reducing gap, from job_settings) against Zoobot's loop's (full decode, plain LANCZOS); inf where identical."""
    from zoobot_core.images import ResizeConfig, load_rgb

    config = ResizeConfig(size=size, draft_tolerance=images["draft_tolerance"], reducing_gap=images["reducing_gap"])
    values = []
    for path in sorted((workdir / f"sources_{fmt}").glob(f"*.{fmt}")):
        reference = np.asarray(Image.open(path).resize((size, size), Image.LANCZOS), dtype=np.float64)
        ours = np.asarray(load_rgb(path, size, config.draft_tolerance, config.reducing_gap), dtype=np.float64)
        mse = np.mean((reference - ours) ** 2)
        values.append(float("inf") if mse == 0 else 10 * np.log10(255**2 / mse))
    return float(np.median(values))


CPU_SPLIT = r'''
import json, resource, sys, time
import pandas as pd
from zoobot_core.images import ResizeConfig
from zoobot_core.schemas import get_tree
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import ShardSettings
catalog, out_dir, workers, images = pd.read_csv(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
catalog["labelled"] = True
size = images["size"]
start = time.perf_counter()
write_shards(catalog, out_dir, ShardSettings(size=size, label_cols=tuple(get_tree("gz_decals_dr5").label_cols), shard_size=images["shard_size"],
             image_encoding="raw"), workers=workers, source_col="file_loc",
             resize=ResizeConfig(size=size, draft_tolerance=images["draft_tolerance"], reducing_gap=images["reducing_gap"]))
wall = time.perf_counter() - start
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "writer_cpu_s": me.ru_utime + me.ru_stime, "workers_cpu_s": kids.ru_utime + kids.ru_stime}))
'''


def with_repo(repo: Path) -> dict[str, str]:
    """The environment for a process whose imports look in `repo` first: a checkout's zoobot_core (ahead of the
    installed one), or scale.py's sitecustomize hook."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}


def workflow_config(catalog: Path, size: int, extra: dict) -> dict:
    """Our side's config: the catalog at `size` px, with --set's dotted keys (images.draft_tolerance=...) applied."""
    config = {"run_name": "bench", "synthetic": {"enabled": False}, "catalog": {"path": str(catalog), "max_quarantine_fraction": 0.0}, "images": {"size": size}}
    for key, value in extra.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config


def job_settings(size: int, extra: dict, repo: Path = REPO) -> dict:
    """The write_shards job's image settings as `repo`'s workflow sees them: its config.yaml's `images` under ours
    (size, --set), plus the shard size."""
    with open(repo / "config/config.yaml") as f:
        defaults = yaml.safe_load(f)
    config = workflow_config(Path(), size, extra)
    return {**defaults["images"], **config["images"], "shard_size": config.get("shards", {}).get("shard_size", defaults["shards"]["shard_size"])}


def cpu_split(catalog: Path, size: int, workdir: Path, workers: int, extra: dict, repo: Path = REPO) -> dict[str, float]:
    """The write_shards job's work alone: shards.write_shards with the job's settings (job_settings), in a fresh
    process importing `repo`'s code. Its wall seconds, and CPU milliseconds per image in the job's main process
    (imports, planning, the manifest; joining shards written in parts; before 2026-11-28's change, receiving,
    encoding, checksumming and writing every record) and in its worker processes (reading and resizing; now also
    encoding and writing the records)."""
    images = job_settings(size, extra, repo)
    script = workdir / "cpu_split.py"
    script.write_text(CPU_SPLIT)
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="split_"))
    try:
        result = subprocess.run([sys.executable, str(script), str(catalog), str(out / "shards"), str(workers), json.dumps(images)],
                                capture_output=True, text=True, env=with_repo(repo))
    finally:
        shutil.rmtree(out)  # 4.5 GB of shards at 30,000 galaxies and 224 px: a run keeps only its timings
    if result.returncode:
        raise RuntimeError(f"write_shards alone failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    n = len(pd.read_csv(catalog, usecols=["id_str"]))
    return {"job_img_s": n / figures["wall_s"], "writer_cpu_ms": 1e3 * figures["writer_cpu_s"] / n, "workers_cpu_ms": 1e3 * figures["workers_cpu_s"] / n}


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of a command run to completion (it must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def run_zoobot(catalog: Path, size: int, workdir: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="zoobot_"))
    script = workdir / "zoobot_loop.py"
    script.write_text(ZOOBOT_LOOP)
    try:
        return timed([sys.executable, str(script), str(catalog), str(out), str(size)], workdir)
    finally:
        shutil.rmtree(out)


def shard_targets(repo: Path) -> list[str]:
    """The files that say a catalog's shards are ready for training, in `repo`'s design: the ready catalog and the
    chunks' combined shards.json (combine_shards), or before chunks the ready catalog alone (its write_shards folder
    came with it). Asked for by name: --until stops at the validation checkpoint in Snakemake 9."""
    chunked = "combine_shards" in (repo / "workflow/rules/images.smk").read_text()
    return ["results/bench/catalog/ready.parquet", *(["results/bench/shards/shards.json"] if chunked else [])]


def run_ours(catalog: Path, size: int, workdir: Path, cores: int, extra: dict, repo: Path = REPO) -> tuple[float, dict[str, float]]:
    """The whole command to the shards (`snakemake shards`: ready for training), with `repo`'s workflow and code, in a
    fresh directory; (seconds, per-rule job seconds)."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="ours_"))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(workflow_config(catalog, size, extra)))
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(repo / "workflow/Snakefile"), "--cores", str(cores),
           "--configfile", "config.yaml", "--quiet", "all", "--", *shard_targets(repo)]
    try:
        seconds = timed(cmd, run_dir, with_repo(repo))
        per_rule: dict[str, float] = {}
        for tsv in (run_dir / "benchmarks").rglob("*.tsv"):
            rule = tsv.parent.name if tsv.parent.name != "bench" else tsv.stem
            per_rule[rule] = per_rule.get(rule, 0.0) + float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
        if not (run_dir / "results/bench/shards/shards.json").is_file():
            raise RuntimeError(f"No shards written in {run_dir}")
    finally:
        shutil.rmtree(run_dir / "results", ignore_errors=True)  # the shards; logs and benchmark files stay
    return seconds, per_rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="catalog rows (repeatable; default 3000)")
    parser.add_argument("--cases", default="jpg:128,jpg:224,png:224", help="input format:size pairs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side at the smallest n (1 above it)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--set", action="append", default=[], help="extra config for ours, dotted key=YAML value")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder of 424 px PNG cutouts (default: the real sample)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--cpu-split", action="store_true", help="also time the write_shards work alone, per process")
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout of this project (e.g. `git worktree add ../old <commit>`): its whole command (and "
                             "--cpu-split) runs too, alternating with this one's, for a before/after in one run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(REPO))
    from zoobot_core.schemas import get_tree

    label_cols = list(get_tree("gz_decals_dr5").label_cols)
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    sizes_n = args.n or [3000]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_chain_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes_n:
        repeats = args.repeats if n == min(sizes_n) else 1
        for case in args.cases.split(","):
            fmt, size = case.split(":")
            catalog = make_catalog(workdir, args.sample, n, fmt, label_cols)
            zoobot, ours, rules, against = [], [], [], []
            for _ in range(repeats):  # alternate the sides so drifts in the machine's speed hit both
                zoobot.append(run_zoobot(catalog, int(size), workdir))
                seconds, per_rule = run_ours(catalog, int(size), workdir, args.cores, extra)
                ours.append(seconds)
                rules.append(per_rule)
                if args.against:
                    against.append(run_ours(catalog, int(size), workdir, args.cores, extra, args.against)[0])
            row = {"n": n, "input": fmt, "size": int(size), "zoobot_s": statistics.median(zoobot), "ours_s": statistics.median(ours),
                   "runs": repeats, "zoobot_runs_s": [round(x, 2) for x in zoobot], "ours_runs_s": [round(x, 2) for x in ours],
                   "ours_rules_s": {k: round(statistics.median(r.get(k, 0.0) for r in rules), 2) for k in rules[0]}}
            row["zoobot_img_s"], row["ours_img_s"] = n / row["zoobot_s"], n / row["ours_s"]
            row["ratio"] = row["ours_img_s"] / row["zoobot_img_s"]
            if against:
                row["against_img_s"], row["against_runs_s"] = n / statistics.median(against), [round(x, 2) for x in against]
                log.info("%s: %.0f img/s; this checkout %.0f img/s (%.2fx)", args.against, row["against_img_s"], row["ours_img_s"],
                         row["ours_img_s"] / row["against_img_s"])
            if args.cpu_split:
                for key, repo in (("cpu_split", REPO), ("against_cpu_split", args.against)):
                    if repo is not None:
                        splits = [cpu_split(catalog, int(size), workdir, args.cores, extra, repo) for _ in range(repeats)]
                        row[key] = {k: round(statistics.median(s[k] for s in splits), 3) for k in splits[0]}
                        log.info("write_shards' work alone (%s), %d workers: %s", repo, args.cores, row[key])
            row["psnr_db"] = psnr_against_zoobot(workdir, fmt, int(size), job_settings(int(size), extra))
            results.append(row)
            log.info("n=%d %s -> %s px: Zoobot's loop %.0f img/s (%.1f s), ours %.0f img/s (%.1f s): %.2fx; ours by rule (job s): %s",
                     n, fmt, size, row["zoobot_img_s"], row["zoobot_s"], row["ours_img_s"], row["ours_s"], row["ratio"], row["ours_rules_s"])
    print("\n| galaxies | input -> px | Zoobot's loop | ours, whole command | ratio | PSNR of ours vs Zoobot's pixels |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['input'].upper()} -> {r['size']} | {r['zoobot_img_s']:.0f} img/s | {r['ours_img_s']:.0f} img/s | {r['ratio']:.2f}x | "
              f"{'identical' if r['psnr_db'] == float('inf') else format(r['psnr_db'], '.1f') + ' dB'} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

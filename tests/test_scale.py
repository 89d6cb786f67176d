"""tests/benchmarks/scale.py (make scale: the workflow at 300k galaxies, every rule's time and memory) at 40 rows, so it cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).parent / "benchmarks" / "scale.py"


def _scale_module():
    """scale.py as a module (it is a script, not on the path)."""
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scale_script_records_every_rule_and_snakemakes_own_share(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--n", "40", "--size", "32", "--cores", "2", "--workdir", str(tmp_path / "work"),
                    "--out", str(tmp_path / "scale.json")], check=True, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "scale.json").read_text())
    jobs = {job["job"]: job for job in summary["jobs"]}
    assert {"validate_catalog", "write_shards/0", "combine_shards", "gather_images"} == set(jobs)  # 40 galaxies: one chunk
    assert all(job["wall_s"] > 0 and job["max_rss_mb"] >= 0 for job in jobs.values())  # jobs under a second may show no memory sample
    # every job's own exact figures (getrusage as it exits), whatever Snakemake's sampling caught
    assert all(job["exact_cpu_s"] > 0 and job["peak_mb"] > 50 for job in jobs.values())
    assert jobs["write_shards/0"]["worker_peak_mb"] > 0  # its worker processes, reaped before it exits
    assert summary["command_s"] >= summary["jobs_busy_s"] > 0 and summary["dag_dry_run_s"] > 0


def test_jobs_side_by_side_count_once():
    scale = _scale_module()
    table = pd.DataFrame({"wall_s": [2.0, 3.0, 3.0, 1.0], "end": [2.0, 6.0, 6.5, 10.0]})  # [0,2], [3,6] and [3.5,6.5] overlap, [9,10]
    assert scale.busy_seconds(table) == 2.0 + 3.5 + 1.0


def test_a_reused_directorys_old_benchmark_files_are_left_out(tmp_path):
    scale = _scale_module()
    folder = tmp_path / "benchmarks" / "scale"
    folder.mkdir(parents=True)
    for name, mtime in (("old_job", 1_000.0), ("new_job", 2_000.0)):
        (folder / f"{name}.tsv").write_text("s\tcpu_time\tmax_rss\n1.5\t1.0\t10\n")
        os.utime(folder / f"{name}.tsv", (mtime, mtime))
    assert scale.rule_table(tmp_path, since=1_500.0)["job"].tolist() == ["new_job"]
    assert scale.rule_table(tmp_path)["job"].tolist() == ["new_job", "old_job"]

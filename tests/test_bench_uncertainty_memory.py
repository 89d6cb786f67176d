"""tests/benchmarks/bench_uncertainty_memory.py (docs/benchmarks.md: the uncertainty rules streamed), --tiny."""

import json
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_the_uncertainty_memory_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests" / "benchmarks"))
    monkeypatch.delitem(sys.modules, "bench_uncertainty_memory", raising=False)
    import bench_uncertainty_memory

    report = bench_uncertainty_memory.main(["--tiny", "--workdir", str(tmp_path), "--out", str(tmp_path / "report.json")])
    rows = report["rows"]
    assert [(r["task"], r["n"], r["samples"]) for r in rows] == [(t, n, 5) for n in (500,) for t in ("calibration", "acquisition", "hdf5")]
    assert all(r["same"] for r in rows)  # streamed outputs equal the whole table's
    assert all(50 < r[f"{how}_peak_mb"] < 2000 and r[f"{how}_s"] > 0 for r in rows for how in ("streamed", "whole"))
    assert json.loads((tmp_path / "report.json").read_text())["table"] == report["table"]
    assert "| acquisition | 500 x 5 |" in report["table"]

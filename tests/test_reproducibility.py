"""tests/benchmarks/cross_cpu.py (make cross-cpu: which settings give the same CPU-trained bits) at a tiny size, so it cannot rot."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zoobot_core.hardware import cpu_description

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("avx2" not in cpu_description()["isa"], reason="the experiment caps oneDNN at AVX2, which this CPU lacks (not x86-64 with AVX2)"),
]

SCRIPT = Path(__file__).parent / "benchmarks" / "cross_cpu.py"


def test_the_cross_cpu_experiment_runs_and_one_setting_repeats_to_the_bit(tiny_shards, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--shards", str(tiny_shards), "--out", str(tmp_path), "--epochs", "1", "--variants", "a", "b", "c"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "cross_cpu.csv").set_index("variant")
    assert list(table.index) == ["a", "c", "b"]
    assert bool(table.loc["b", "identical_to_a"])  # same environment and threads, a fresh process: the same weights
    assert table.loc["c", "env"] == "ONEDNN_MAX_CPU_ISA=AVX2" and table["code"].nunique() == 1
    assert "AVX2" in table.loc["c", "onednn_isa"]  # oneDNN did dispatch as capped
    assert (tmp_path / "cross_cpu.md").read_text().count("\n| ") >= 4

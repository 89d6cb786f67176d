"""tests/benchmarks/bench_gpu.py --tiny (32 px, batches 4 and 8, 2 steps) on the CPU, so the GPU benchmark cannot rot.

It runs in a fresh process per backend: TensorFlow here; JAX where jax is installed (the script must then not need
TensorFlow at all).
"""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "tests" / "benchmarks" / "bench_gpu.py"


def run_tiny(tmp_path, backend: str) -> dict:
    """Run the script with --tiny on `backend` on the CPU; its JSON."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| size (input px) |" in result.stdout and "3,454 img/s training" in result.stdout, result.stdout[-3000:]
    return json.loads(out.read_text())


def check(results: dict, backend: str) -> None:
    """Rows for float32 and mixed_bfloat16 with positive finite rates, and the input side's rate."""
    assert results["environment"]["backend"] == backend
    timed = [r for r in results["rows"] if r["status"] == "ok"]
    assert {r["precision"] for r in timed} == {"float32", "mixed_bfloat16"}, results["rows"]
    assert {r["batch_size"] for r in timed} == {4, 8}
    for r in timed:
        for key in ("train_img_s", "predict_img_s", "train_compile_s", "predict_compile_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
    [side] = results["input"]
    assert side["workers"] == os.cpu_count() and side["images"] > 0
    assert math.isfinite(side["img_s"]) and side["img_s"] > 0
    assert math.isfinite(side["cores_needed"]) and side["cores_needed"] > 0


@pytest.mark.slow
def test_the_gpu_benchmark_runs_tiny_on_the_tensorflow_backend(tmp_path):
    check(run_tiny(tmp_path, "tensorflow"), "tensorflow")


@pytest.mark.slow
def test_the_gpu_benchmark_runs_tiny_on_the_jax_backend(tmp_path):
    pytest.importorskip("jax", reason="jax is not installed (pip install jax runs the benchmark on Keras' JAX backend)")
    results = run_tiny(tmp_path, "jax")
    check(results, "jax")
    # JAX always compiles with XLA: the full model's augmentation layers cannot be, so the timed rows are without them
    assert {(r["xla"], r["model"]) for r in results["rows"] if r["status"] == "ok"} == {("on", "no augmentation")}

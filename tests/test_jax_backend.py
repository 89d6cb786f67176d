"""The model and the loss on Keras' JAX backend: they are written in keras.ops only, with no tf.* inside.

The project's environment has TensorFlow, not JAX, so this skips unless jax is installed
(`pip install jax`). It runs in a fresh process with KERAS_BACKEND=jax.
"""

import ast
import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO

_CHECK = """
import numpy as np, keras, scipy.stats
from zoobot_core.losses import DirichletMultinomialLoss
from zoobot_core.model import get_model
from zoobot_core.schemas import get_tree
assert keras.backend.backend() == "jax"
tree = get_tree("gz_decals_dr5")
rng = np.random.default_rng(0)
concentrations = rng.uniform(1, 20, (4, len(tree.label_cols))).astype("float32")
votes = rng.integers(0, 10, (4, len(tree.label_cols))).astype("float32")
loss = DirichletMultinomialLoss(tree.question_index_groups)
expected = [
    -sum(scipy.stats.dirichlet_multinomial.logpmf(v[a:b + 1], c[a:b + 1], v[a:b + 1].sum()) for a, b in tree.question_index_groups if v[a:b + 1].sum() > 0)
    for v, c in zip(votes, concentrations)
]
np.testing.assert_allclose(np.asarray(loss.call(votes, concentrations)), expected, rtol=1e-4)
model = get_model(len(tree.label_cols), 32, 24, 32, 1, 0.2, seed=0, batchnorm_momentum=0.9)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
images = rng.random((8, 32, 32, 1)).astype("float32")
history = model.fit(images, votes[np.arange(8) % 4], batch_size=8, epochs=1, verbose=0)
assert np.isfinite(history.history["loss"]).all()
out = model.predict(images, verbose=0)
assert np.isfinite(out).all() and (out > 1).all() and (out < 101).all()
print("ok on", keras.backend.backend())
"""


def test_model_and_loss_modules_do_not_use_tensorflow():
    for module in ("model", "losses"):
        tree = ast.parse((REPO / "zoobot_core" / f"{module}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "tensorflow" not in imported, f"zoobot_core/{module}.py imports tensorflow; use keras.ops"
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "tf" not in names, f"zoobot_core/{module}.py uses tf.*; use keras.ops"


@pytest.mark.slow
def test_model_trains_and_loss_matches_scipy_on_the_jax_backend():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install jax runs the model and loss on Keras' JAX backend)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ok on jax" in run.stdout

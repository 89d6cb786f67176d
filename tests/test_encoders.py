"""Zoobot 2's encoders in Keras compute what timm computes.

The fixtures (tests/fixtures/encoders/, made by make_fixtures.py with timm itself) are tiny ConvNeXt and
EfficientNet networks with every weight, norm parameter, layer scale and BatchNorm statistic randomised,
saved as timm saves a Hugging Face repo, with timm's pooled features of a fixed input (float64).
The full-size comparison with timm is tests/test_encoders_timm.py (where torch and timm are installed).
"""

from __future__ import annotations

import ast
import json
import shutil

import numpy as np
import pytest
from conftest import REPO

from zoobot_core import encoders
from zoobot_core.encoders.layers import StateDictError, load_state_dict

FIXTURES = REPO / "tests" / "fixtures" / "encoders"
CASES = {
    # name: (weights file timm saved, input channels, stages unfreeze_blocks counts)
    "convnext_nano": ("pytorch_model.bin", 3, 4),
    "convnext_tiny": ("model.safetensors", 3, 4),
    "greyscale-convnext_nano": ("pytorch_model.bin", 1, 4),
    "efficientnet_b0": ("pytorch_model.bin", 3, 7),
    "greyscale-efficientnet_b0": ("model.safetensors", 1, 7),
    "resnet18": ("model.safetensors", 3, 4),
    "resnet50": ("pytorch_model.bin", 3, 4),
}


def _features(folder, images):
    model = encoders.load_encoder(folder, images.shape[1:])
    return np.asarray(model.predict(images, verbose=0), np.float64), model


@pytest.mark.parametrize("name", sorted(CASES))
def test_pooled_features_equal_timms_on_its_own_fixture(name):
    weights, channels, n_stages = CASES[name]
    folder = FIXTURES / name
    assert (folder / weights).is_file()
    io = np.load(folder / "io.npz")
    features, model = _features(folder, io["images"])
    reference = io["features"]
    assert features.shape == reference.shape and model.input_shape[-1] == channels
    # the fixture is not degenerate: its features depend on the image, so an error on the input path would show
    assert np.abs(reference).max() > 0.1 and np.abs(reference[0] - reference[1]).max() > 0.05 * np.abs(reference).max()
    np.testing.assert_allclose(features, reference, rtol=1e-4, atol=2e-5 * np.abs(reference).max())
    info = encoders.describe_encoder(folder)
    assert (info.in_chans, info.num_features) == (channels, reference.shape[1])
    assert len([s for s in encoders.encoder_stages(model) if s not in ("stem", "head")]) == n_stages


def test_a_transposed_or_missing_tensor_is_refused_by_name(tmp_path):
    from zoobot_core.encoders.weights import read_state_dict

    folder = FIXTURES / "convnext_tiny"
    state = read_state_dict(folder / "model.safetensors")
    model = encoders.load_encoder(folder, (72, 72, 3))
    bad = dict(state, **{"stages.1.blocks.0.mlp.fc1.weight": state["stages.1.blocks.0.mlp.fc1.weight"].T.copy()})
    with pytest.raises(StateDictError, match="stages.1.blocks.0.mlp.fc1"):
        load_state_dict(model, bad)
    with pytest.raises(StateDictError, match="stages_2_blocks_0_gamma"):
        load_state_dict(model, {k: v for k, v in state.items() if k != "stages.2.blocks.0.gamma"})
    with pytest.raises(StateDictError, match="extra.weight"):
        load_state_dict(model, dict(state, **{"extra.weight": np.zeros(3, np.float32)}))


def test_an_architecture_not_built_is_refused_listing_those_that_are(tmp_path):
    folder = tmp_path / "vit"
    shutil.copytree(FIXTURES / "convnext_nano", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "vit_base_patch16_224"}))
    with pytest.raises(encoders.ArchitectureError, match="vit_base_patch16_224.*convnext_nano.*efficientnet_b0"):
        encoders.describe_encoder(folder)


def test_weights_smaller_than_the_published_architecture_are_refused_without_model_args(tmp_path):
    """A published repo's config.json has no model_args: its weights must be the size its name promises."""
    folder = tmp_path / "nano"
    shutil.copytree(FIXTURES / "convnext_nano", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("model_args")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(encoders.ArchitectureError, match=r"depths \(1, 2, 1, 1\) \(timm's convnext_nano: \(2, 2, 8, 2\)\)"):
        encoders.describe_encoder(folder)


def test_the_ports_use_keras_ops_only_so_they_run_on_jax():
    for module in ("layers", "convnext", "efficientnet", "resnet"):
        tree = ast.parse((REPO / "zoobot_core" / "encoders" / f"{module}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"tensorflow", "torch"}, f"zoobot_core/encoders/{module}.py imports {imported & {'tensorflow', 'torch'}}"


def test_a_finetuned_network_on_an_encoder_saves_loads_and_unfreezes_its_last_stages(tmp_path):
    """build_network puts the encoder behind Zoobot's augmentations with a new head; the .keras file reloads
    to the same outputs, and unfreeze_blocks counts the architecture's own stages."""
    from zoobot_core.bases import ENCODER, BaseSpec, base_channels, build_network, efficientnet_of
    from zoobot_core.finetune import _copy_of, unfreeze_last_blocks
    from zoobot_core.runtime import load_keras_model

    base = BaseSpec(ENCODER, str(FIXTURES / "greyscale-convnext_nano"))
    assert base_channels(base, None) == 1
    network = build_network(base, 48, 1, 36, 40, 1, "sigmoid", 0.2, 0)
    images = np.random.default_rng(0).uniform(0, 1, (3, 48, 48, 1)).astype(np.float32)
    copy = _copy_of(network)
    assert unfreeze_last_blocks(copy, 1) == ["head", "stages_3"]
    encoder = efficientnet_of(copy)
    trainable = {layer.name for layer in encoder.layers if layer.trainable and layer.weights}
    assert trainable and all(name.startswith(("stages_3_", "head_")) for name in trainable)
    assert not encoder.get_layer("stages_2_blocks_0_conv_dw").trainable
    copy.save(tmp_path / "model.keras")
    reloaded = load_keras_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), copy.predict(images, verbose=0), rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="1-channel"):
        base_channels(base, False)

    effnet = build_network(BaseSpec(ENCODER, str(FIXTURES / "efficientnet_b0")), 48, 3, 36, 40, 1, "sigmoid", 0.2, 0)
    assert unfreeze_last_blocks(effnet, 2) == ["blocks_5", "blocks_6", "head"]


def test_the_encoder_benchmark_runs_in_its_tiny_version(tmp_path):
    """bench_encoders.py --tiny (the fixtures at 64 px, Keras only): the benchmark cannot rot."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "tests/benchmarks/bench_encoders.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["speed"]
    assert [row["arch"] for row in rows] == ["convnext_nano", "efficientnet_b0"]
    assert all(row["keras_images_per_s"] > 0 and row["keras_peak_mb"] > 100 for row in rows)


def test_model_args_that_the_weights_do_not_show_are_refused_by_name(tmp_path):
    """timm's norm_eps, act_layer or pad_type change the numbers without changing a shape: refused, not ignored."""
    folder = tmp_path / "eps"
    shutil.copytree(FIXTURES / "convnext_nano", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(encoders.ArchitectureError, match=r"model_args has \['norm_eps'\]"):
        encoders.describe_encoder(folder)


def test_unfreezing_more_stages_than_the_encoder_has_is_refused_naming_its_count():
    from zoobot_core.bases import ENCODER, BaseSpec, build_network
    from zoobot_core.finetune import FinetuneConfig, network_input_size, unfreeze_last_blocks

    base = BaseSpec(ENCODER, str(FIXTURES / "convnext_nano"))
    network = build_network(base, 48, 3, 36, 40, 1, "sigmoid", 0.2, 0)
    with pytest.raises(ValueError, match=r"unfreeze_blocks is 5 but the base timm_convnext_nano has 4 \(stages_0, .*stages_3\): set it to at most 4"):
        unfreeze_last_blocks(network, 5)
    assert unfreeze_last_blocks(network, 4) == ["head", "stages_0", "stages_1", "stages_2", "stages_3"]
    # Zoobot 2's encoders see 224 px unless resize_size says otherwise; other bases the crop
    assert network_input_size(base, 48, FinetuneConfig()) == 224
    assert network_input_size(base, 48, FinetuneConfig(resize_size=64)) == 64
    assert network_input_size(BaseSpec("none"), 48, FinetuneConfig()) == 36


def test_the_fingerprint_names_the_weights_and_a_cached_snapshot_commit(tmp_path):
    import hashlib

    snapshot = tmp_path / "models--someone--enc" / "snapshots" / ("ab" * 20)
    shutil.copytree(FIXTURES / "convnext_tiny", snapshot)
    fingerprint = encoders.encoder_fingerprint(snapshot)
    assert fingerprint["weights_file"] == "model.safetensors" and fingerprint["hf_commit"] == "ab" * 20
    assert fingerprint["weights_sha256"] == hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    assert encoders.encoder_fingerprint(FIXTURES / "convnext_tiny")["hf_commit"] is None


def test_a_model_finetuned_from_an_encoder_is_not_taken_as_a_pipeline_base(tmp_path):
    from zoobot_core.bases import ENCODER, PIPELINE, BaseModelError, BaseSpec, build_network

    build_network(BaseSpec(ENCODER, str(FIXTURES / "convnext_nano")), 48, 3, 36, 40, 1, "sigmoid", 0.2, 0).save(tmp_path / "model.keras")
    with pytest.raises(BaseModelError, match="finetuned from the Zoobot 2 encoder convnext_nano.*Set finetune.base_model to that encoder"):
        build_network(BaseSpec(PIPELINE, str(tmp_path / "model.keras")), 48, 3, 36, 40, 1, "sigmoid", 0.2, 0)

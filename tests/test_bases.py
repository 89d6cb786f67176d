"""Bases for finetuning: ImageNet weights (as Keras builds them, colour and greyscale), offline errors, random weights, pipeline models at another size."""

import h5py
import keras
import numpy as np
import pytest

from zoobot_core import bases
from zoobot_core.bases import BaseModelError, BaseSpec, build_network, resolve_base
from zoobot_core.model import get_model


def _features(model):
    return keras.Model(model.inputs, model.get_layer(bases.STANDARDISE).input)


@pytest.fixture(scope="module")
def notop_weights(tmp_path_factory):
    """An EfficientNetB0 no-top weights file in Keras' legacy HDF5 layout (the layout of the real ImageNet
    file), from random weights and made-up input statistics: the ImageNet file cannot be downloaded here."""
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(0)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    norm = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    norm.set_weights([np.array([0.485, 0.456, 0.406], "float32"), np.array([0.05, 0.06, 0.07], "float32"), np.array(0)])
    path = tmp_path_factory.mktemp("weights") / bases.IMAGENET_FILE
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    return path


def test_imagenet_base_computes_what_keras_imagenet_efficientnet_computes(notop_weights, monkeypatch, tmp_path):
    import keras.src.applications.efficientnet as efficientnet

    # Keras' own weights="imagenet" network, its download pointed at the same file
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *args, **kwargs: str(notop_weights))
    reference = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(64, 64, 3), pooling="avg")
    images = np.random.default_rng(1).random((3, 64, 64, 3)).astype("float32")
    expected = reference.predict(images * 255, verbose=0)
    spec = BaseSpec(bases.IMAGENET, str(notop_weights))
    colour = build_network(spec, 64, 3, 64, 64, 1, "sigmoid")
    np.testing.assert_allclose(_features(colour).predict(images, verbose=0), expected, rtol=1e-3, atol=1e-9)
    # greyscale images go through the RGB weights as three equal channels
    grey = build_network(spec, 64, 1, 64, 64, 1, "sigmoid")
    grey_images = images.mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(_features(grey).predict(grey_images, verbose=0),
                               reference.predict(np.repeat(grey_images, 3, axis=-1) * 255, verbose=0), rtol=1e-3, atol=1e-9)
    # and the saved model keeps it
    colour.save(tmp_path / "m.keras")
    from zoobot_core.runtime import load_keras_model

    np.testing.assert_allclose(_features(load_keras_model(tmp_path / "m.keras")).predict(images, verbose=0), expected, rtol=1e-3, atol=1e-9)


def test_imagenet_offline_without_the_file_stops_naming_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(BaseModelError) as err:
        resolve_base("imagenet", origin="http://127.0.0.1:9/efficientnetb0_notop.h5")  # nothing listens on port 9
    message = str(err.value)
    assert str(tmp_path / "keras" / "models" / bases.IMAGENET_FILE) in message and "finetune.base_model" in message
    assert not list((tmp_path / "keras" / "models").glob("*"))  # no partial download left behind


def test_imagenet_from_keras_cache_or_a_local_file(tmp_path, monkeypatch, notop_weights):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(bases.MIRROR_VARIABLE, "http://127.0.0.1:9/efficientnetb0_notop.h5")  # never the internet
    cached = tmp_path / "keras" / "models" / bases.IMAGENET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(notop_weights.read_bytes())
    with pytest.raises(BaseModelError, match="could not be downloaded"):  # not the file Keras publishes (MD5): fetched again, which fails here
        resolve_base("imagenet")
    monkeypatch.setattr(bases, "IMAGENET_MD5", bases._md5(cached))  # as if it were
    assert resolve_base("imagenet") == BaseSpec(bases.IMAGENET, str(cached))
    assert resolve_base(str(notop_weights)) == BaseSpec(bases.IMAGENET, str(notop_weights.resolve()))
    assert resolve_base("none") == BaseSpec(bases.NONE)
    assert resolve_base(None, default_model="results/x/model/model.keras") == BaseSpec(bases.PIPELINE, "results/x/model/model.keras")
    with pytest.raises(BaseModelError, match="does not exist"):
        resolve_base(str(tmp_path / "nowhere.keras"))
    with pytest.raises(BaseModelError, match="'imagenet', 'none'"):
        resolve_base(str(tmp_path / "model.pt"))


def test_a_pipeline_base_at_another_size_keeps_its_trained_weights(tmp_path):
    trained = get_model(34, 64, 48, 48, 1, seed=0)
    trained.save(tmp_path / "model.keras")
    spec = resolve_base(str(tmp_path / "model.keras"))
    assert bases.base_channels(spec, None) == 1
    with pytest.raises(BaseModelError, match="1-channel"):
        bases.base_channels(spec, False)
    network = build_network(spec, 96, 1, 72, 72, 1, "sigmoid")
    assert network.input_shape == (None, 96, 96, 1)
    for a, b in zip(bases.efficientnet_of(network).get_weights(), bases.efficientnet_of(trained).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_random_base_differs_from_the_pipeline_base(tmp_path):
    random_net = build_network(BaseSpec(bases.NONE), 64, 3, 48, 48, 2, "softmax", seed=1)
    assert random_net.output_shape == (None, 2) and random_net.get_layer(bases.HEAD).activation.__name__ == "softmax"
    with pytest.raises(ValueError, match="at least 32"):
        build_network(BaseSpec(bases.NONE), 32, 3, 24, 24, 1, "sigmoid")

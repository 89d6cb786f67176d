import keras
import numpy as np
import pytest

from zoobot_core.model import CropAndResize, get_model, representation_model


@pytest.fixture(scope="module")
def model():
    return get_model(output_dim=5, input_size=40, crop_size=32, resize_size=32, channels=1, seed=0)


def test_too_small_an_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="train.resize_size"):
        get_model(output_dim=5, input_size=32, crop_size=24)


def test_head_outputs_concentrations_between_1_and_101(model):
    out = model.predict(np.random.default_rng(0).random((3, 40, 40, 1)).astype("float32"), verbose=0)
    assert out.shape == (3, 5)
    assert (out > 1).all() and (out < 101).all()


def test_representation_is_the_pooled_1280_features(model):
    features = representation_model(model).predict(np.zeros((2, 40, 40, 1), "float32"), verbose=0)
    assert features.shape == (2, 1280)


def test_augmentation_is_random_in_training_and_fixed_in_inference():
    layer = CropAndResize(24, 16, seed=1)
    images = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    inference = keras.ops.convert_to_numpy(layer(images, training=False))
    np.testing.assert_array_equal(inference, keras.ops.convert_to_numpy(layer(images, training=False)))
    assert inference.shape == (2, 16, 16, 1)
    # inference crops the centre at the training scale (not a shrunken whole image)
    np.testing.assert_allclose(inference, keras.ops.convert_to_numpy(keras.layers.Resizing(16, 16)(images[:, 4:28, 4:28])), atol=1e-6)
    trained = [keras.ops.convert_to_numpy(layer(images, training=True)) for _ in range(4)]
    assert any(not np.array_equal(trained[0], t) for t in trained[1:])


def test_model_saves_and_loads_with_the_same_outputs(model, tmp_path):
    images = np.random.default_rng(1).random((2, 40, 40, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)

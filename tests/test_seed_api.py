"""The Zoobot calls users know (../shared/SEED_API.md), run as written there with `zoobot` -> `zoobot_core`."""

import numpy as np
import pandas as pd


def test_seed_api_calls_as_documented(real_sample, tmp_path):
    catalog = pd.read_csv(real_sample / "catalog.csv")
    catalog["id_str"] = catalog["iauname"]
    catalog["file_loc"] = [str(real_sample / p) for p in catalog["local_png_loc"]]

    # Loading data
    from zoobot_core.data_utils import image_datasets

    paths, labels = list(catalog["file_loc"][:6]), list(catalog["ring"][:6])
    ds = image_datasets.get_image_dataset(paths, file_format="png", requested_img_size=300, batch_size=64, labels=labels)
    batch = next(iter(ds))
    assert batch["matrix"].shape == (6, 300, 300, 3)
    assert [p.decode() for p in batch["id_str"].numpy()] == paths
    np.testing.assert_array_equal(batch["label"].numpy(), labels)
    assert 0 <= float(batch["matrix"].numpy().min()) and float(batch["matrix"].numpy().max()) <= 255

    from zoobot_core.data_utils.shards import ShardConfig

    labelled_catalog, unlabelled_catalog = catalog.iloc[:90], catalog.iloc[90:][["id_str", "file_loc"]]
    shard_config = ShardConfig(shard_dir=str(tmp_path / "directory/tfrecords"), size=64)
    shard_config.prepare_shards(labelled_catalog, unlabelled_catalog, train_test_fraction=0.8, columns_to_save=["ring"])
    manifest = pd.read_parquet(tmp_path / "directory/tfrecords/manifest.parquet")
    assert len(manifest) == len(catalog)
    assert (manifest["split"] == "unlabelled").sum() == 14

    from zoobot_core.data_utils import tfrecord_datasets

    train_records = sorted(str(p) for p in (tmp_path / "directory/tfrecords/train").glob("*.tfrecord"))
    columns_to_save, batch_size = ["ring"], 16
    raw_train = tfrecord_datasets.get_dataset(train_records, columns_to_save, batch_size, shuffle=True)

    # Preprocessing: one config for train and prediction data
    from zoobot_core import preprocess

    cfg = preprocess.PreprocessingConfig(label_cols=["ring"], input_size=64, normalise_from_uint8=True, make_greyscale=True, permute_channels=False)
    train = preprocess.preprocess_dataset(raw_train, cfg)
    images, ring = next(iter(train))
    assert images.shape[1:] == (64, 64, 1) and float(images.numpy().max()) <= 1.0
    assert ring.shape == (16, 1) and set(np.unique(ring.numpy())) <= {0.0, 1.0}

    # Model, training, predictions (the finetune_minimal shape: binary head)
    import keras

    from zoobot_core.model import get_model

    model = get_model(output_dim=1, input_size=64, channels=1, head_activation="sigmoid")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(train.take(2), epochs=1, verbose=0)
    label_cfg = preprocess.PreprocessingConfig(label_cols=["label"], input_size=64)
    pred_dataset = preprocess.preprocess_dataset(image_datasets.get_image_dataset(paths, file_format="png", requested_img_size=64, batch_size=4, labels=labels), label_cfg)
    predictions = model.predict(pred_dataset, verbose=0)
    assert predictions.shape == (6, 1) and ((predictions > 0) & (predictions < 1)).all()
    assert isinstance(model, keras.Model)

"""Zoobot's `data_utils` namespace: `image_datasets`, `tfrecord_datasets` and `shards`."""

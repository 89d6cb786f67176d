"""Zoobot's `tfrecord_datasets` module name; the implementation lives in `zoobot_core.datasets`."""

from zoobot_core.datasets import get_dataset

__all__ = ["get_dataset"]

"""Zoobot's `image_datasets` module name; the implementation lives in `zoobot_core.datasets`."""

from zoobot_core.datasets import get_image_dataset

__all__ = ["get_image_dataset"]

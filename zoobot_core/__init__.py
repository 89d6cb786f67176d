"""Zoobot (TensorFlow edition) components for galaxy morphology, composed by a Snakemake pipeline.

Modules are imported on demand (no work at import time): `zoobot_core.catalog`, `.images`,
`.shards`, `.datasets`, `.preprocess`, `.losses`, `.model`, `.train`, `.predict`, `.cluster`.
"""

__version__ = "0.1.0"

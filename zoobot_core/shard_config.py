"""Zoobot's ShardConfig (data_utils.shards): train / eval (val) / test and unlabelled shards written from catalogs of
image files by the pipeline's own image path (shard_writer.write_shards with its resize), in a notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zoobot_core.catalog import FILE, ID, LABELLED
from zoobot_core.images import ResizeConfig
from zoobot_core.shard_writer import write_shards
from zoobot_core.shards import UNLABELLED, ShardSettings


def _refuse_unreadable(unreadable: pd.DataFrame) -> None:
    """The seed API's policy: an image that cannot be used stops prepare_shards, naming every such file's galaxy and reason."""
    if len(unreadable):
        listed = "; ".join(f"{r[ID]}: {r['reason']} ({r['message']})" for r in unreadable.head(5).to_dict("records"))
        raise ValueError(f"{len(unreadable)} image(s) cannot go into shards: {listed}. Fix or drop those rows of the catalog")


@dataclass
class ShardConfig:
    """Zoobot's ShardConfig: write train / eval (val) / test and unlabelled shards from catalogs of image files."""

    shard_dir: str
    size: int = 300
    shard_size: int = 4096
    seed: int = 42
    columns_to_save: list[str] = field(default_factory=list)

    @property
    def train_dir(self) -> str:
        return str(Path(self.shard_dir) / "train")

    @property
    def eval_dir(self) -> str:
        return str(Path(self.shard_dir) / "val")

    @property
    def val_dir(self) -> str:
        return self.eval_dir

    @property
    def test_dir(self) -> str:
        return str(Path(self.shard_dir) / "test")

    @property
    def unlabelled_dir(self) -> str:
        return str(Path(self.shard_dir) / UNLABELLED)

    def prepare_shards(
        self,
        labelled_catalog: pd.DataFrame,
        unlabelled_catalog: pd.DataFrame | None = None,
        train_test_fraction: float = 0.8,
        columns_to_save: list[str] | None = None,
        val_fraction: float | None = None,
    ) -> pd.DataFrame:
        """Resize each catalog's `file_loc` images to `size` and write shards; the rest of the labelled
        galaxies beyond `train_test_fraction` are split evenly into val (eval) and test unless `val_fraction` is given."""
        columns = list(columns_to_save if columns_to_save is not None else self.columns_to_save)
        self.columns_to_save = columns
        missing = [c for c in (ID, FILE, *columns) if c not in labelled_catalog.columns]
        if missing:
            raise KeyError(f"labelled_catalog lacks column(s) {missing}; it needs id_str, file_loc and every column in columns_to_save")
        parts = [labelled_catalog.assign(**{LABELLED: True})]
        if unlabelled_catalog is not None and len(unlabelled_catalog):
            parts.append(unlabelled_catalog.assign(**{LABELLED: False}))
        catalog = pd.concat(parts, ignore_index=True)
        settings = ShardSettings(
            size=self.size,
            label_cols=tuple(columns),
            shard_size=self.shard_size,
            seed=self.seed,
            train_fraction=train_test_fraction,
            val_fraction=(1 - train_test_fraction) / 2 if val_fraction is None else val_fraction,
        )
        # the workflow's own image path (resized_bytes: its resize, FITS handling and quarantine reasons), PNG level 1
        resize = ResizeConfig(size=self.size, png_compress_level=1)
        return write_shards(catalog, self.shard_dir, settings, source_col=FILE, resize=resize, check_unreadable=_refuse_unreadable, hash_images=False)

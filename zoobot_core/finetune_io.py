"""Finetuning's files: the workflow's labelled catalog and its shards read for finetune() (finetune_files, the
finetune_model rule), which labelled galaxies the base was trained on (seen_by, base_overlap: a pipeline base's
trained_on.parquet), and a finetuning's outputs written (write_outputs). The procedure itself, cross-validation and
the final model, is finetune.py's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from zoobot_core.bases import ENCODER, PIPELINE, BaseSpec
from zoobot_core.finetuned import FINETUNE_CONFIG

if TYPE_CHECKING:
    from zoobot_core.finetune import FinetuneConfig

log = logging.getLogger(__name__)


def write_outputs(out_dir: Path, model, settings: dict, oof: pd.DataFrame, cv_metrics: pd.DataFrame, history: pd.DataFrame, summary: dict) -> None:
    """A finetuning's outputs in `out_dir`, each written atomically: model.keras and finetune_config.json (the final
    model and what prediction needs), cv_predictions.parquet, cv_metrics.csv, history.csv and metrics.json."""
    from zoobot_core.io import atomic_path, atomic_write_table, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    write_json(settings, out_dir / FINETUNE_CONFIG)
    atomic_write_table(oof, out_dir / "cv_predictions.parquet")
    atomic_write_table(cv_metrics, out_dir / "cv_metrics.csv")
    atomic_write_table(history, out_dir / "history.csv")
    write_json(summary, out_dir / "metrics.json")


def seen_by(base: BaseSpec) -> set[str] | None:
    """Ids a pipeline base was trained or early-stopped on (trained_on.parquet beside it); None when unknown
    (a Zoobot 2 encoder's Galaxy Zoo training galaxies are not published with it); none for ImageNet or random weights."""
    from zoobot_core.runtime import TRAINED_ON

    if base.kind == ENCODER:
        return None
    if base.kind != PIPELINE:
        return set()
    record = Path(base.path).parent / TRAINED_ON
    if not record.is_file():
        return None
    table = pd.read_parquet(record)
    if "id_str" not in table.columns:
        raise ValueError(f"{record} has no id_str column (columns: {list(table.columns)}); it is not a trained_on.parquet train_model wrote: retrain the base or remove the file")
    return set(table["id_str"].astype(str))


def base_overlap(ids: np.ndarray, base: BaseSpec, seen_by_base: set[str] | frozenset | None = None) -> tuple[np.ndarray, dict]:
    """Which labelled galaxies the base was trained on (never to be scored), and the record of how that was known:
    {"checked": whether it could be known, "n_matched": labelled ids among the base's training ids (None when not
    checked), "source": "seen_by_base", the trained_on.parquet read, or why none is needed}.

    `seen_by_base` None: a pipeline base's trained_on.parquet; ImageNet or random weights saw no galaxy.
    """
    from zoobot_core.runtime import TRAINED_ON

    ids = np.asarray(ids).astype(str)
    if seen_by_base is not None:
        seen, source = {str(i) for i in seen_by_base}, "seen_by_base"
    elif base.kind == ENCODER:
        log.warning("The encoder %s was pretrained on Galaxy Zoo galaxies whose ids are not published with it: labelled galaxies among them "
                    "cannot be kept out of scoring (metrics.json: base_overlap checked false). Pass seen_by_base if you have its training ids", base.path)
        return np.zeros(len(ids), bool), {"checked": False, "n_matched": None, "source": "encoder base: its training galaxies are not published with it"}
    else:
        seen = seen_by(base)
        source = str(Path(base.path).parent / TRAINED_ON) if base.kind == PIPELINE else f"{base.kind} base: trained on no galaxies"
    if seen is None:
        log.warning("%s has no %s beside it: cannot tell whether the finetuning galaxies were among its training galaxies, so none is kept "
                    "out of scoring (metrics.json: base_overlap checked false). Pass seen_by_base, or put the file back beside the model", base.path, TRAINED_ON)
        return np.zeros(len(ids), bool), {"checked": False, "n_matched": None, "source": None}
    excluded = np.isin(ids, sorted(seen))
    log.info("%d of %d labelled galaxies are among the base's training galaxies (%s): never scored", excluded.sum(), len(ids), source)
    return excluded, {"checked": True, "n_matched": int(excluded.sum()), "source": source}


def finetune_files(
    ready_path: Path | str, accounting_path: Path | str, shard_root: Path | str, base: BaseSpec, label_col: str, out_dir: Path | str,
    config: FinetuneConfig, threads: int | None = None,
) -> dict:
    """The finetune_model rule: the labelled catalog's images (validated, quarantined and resized into the shards
    under `shard_root` by the pipeline's own rules), read a batch at a time, then finetune(); the catalog's row
    accounting goes into metrics.json."""
    import json

    from zoobot_core.image_source import ShardImages

    ready = pd.read_parquet(ready_path).sort_values("id_str").reset_index(drop=True)
    images = ShardImages(ready, shard_root)
    accounting = json.loads(Path(accounting_path).read_text())
    # seen_by_base None: finetune reads the base's trained_on.parquet (base_overlap), as the workflow always has
    from zoobot_core.finetune import finetune

    return finetune(images, ready["id_str"].to_numpy(), ready[label_col].to_numpy(), base, out_dir, config, label_col, None, threads, accounting)

"""Using a finetuned model: features averaged over a galaxy's four 90-degree rotations, then the new
head, once with dropout off (the prediction) and `n_samples` times with it on (MC dropout: the
spread). On images in memory, or on a whole survey's TFRecord shards a batch at a time.

The model is a plain Keras model (bases.build_network); `finetune_config.json` beside it records
what prediction needs: task, label, classes, decision threshold, channels, and (temperature scaling
on) the temperature every probability is rescaled by.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from zoobot_core.bases import DROPOUT, HEAD, STANDARDISE
from zoobot_core.runtime import leaves_process_state

log = logging.getLogger(__name__)

ROTATIONS = 4
FINETUNE_CONFIG = "finetune_config.json"


def model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """0-255 RGB images (uint8 or float) as the network takes them (preprocess.preprocess_images: [0, 1],
    the mean over RGB when it takes one channel)."""
    from zoobot_core.preprocess import PreprocessingConfig, preprocess_images

    return preprocess_images(np.asarray(images), PreprocessingConfig(input_size=images.shape[1], make_greyscale=channels == 1)).numpy()


def feature_extractor(model):
    """The network up to the base's pooled features (the input of the standardisation), sharing weights."""
    from zoobot_core.model import representation_model

    return representation_model(model, after=STANDARDISE)


def rotation_features(extractor, images: np.ndarray, channels: int, batch_size: int = 32, desc: str | None = None) -> np.ndarray:
    """Pooled features of each image averaged over its four 90-degree rotations (rows follow `images`).

    The network sees one rotation of a batch at a time, so memory is that of `batch_size` images whatever the
    rotations (a 224 px ConvNeXt's activations are ~20 MB per image)."""
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, mininterval=10):
        batch = model_input(images[start : start + batch_size], channels)
        features = sum(np.asarray(extractor.predict_on_batch(np.ascontiguousarray(np.rot90(batch, k, axes=(1, 2)))), np.float64) for k in range(ROTATIONS))
        out.append((features / ROTATIONS).astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, extractor.output.shape[-1]), np.float32)


def head_outputs(model, features: np.ndarray, n_samples: int = 0, seed: int = 0) -> np.ndarray:
    """The head on given features: (n, units) with dropout off; with n_samples > 0, (n, n_samples, units)
    with dropout on (MC dropout, seeded)."""
    import keras

    standardise, head = model.get_layer(STANDARDISE), model.get_layer(HEAD)
    x = standardise(np.asarray(features, np.float32))
    if n_samples == 0:
        return keras.ops.convert_to_numpy(head(x))
    dropout = keras.layers.Dropout(model.get_layer(DROPOUT).rate, seed=seed)
    return np.stack([keras.ops.convert_to_numpy(head(dropout(x, training=True))) for _ in range(n_samples)], axis=1)


def scores_from_outputs(outputs: np.ndarray, task: str) -> np.ndarray:
    """Head outputs as scores: P(class 1) (binary), class probabilities (multiclass), values (regression)."""
    return outputs if task == "multiclass" else outputs[..., 0]


def model_scores(model, images: np.ndarray, channels: int, task: str, batch_size: int = 32) -> np.ndarray:
    """The model's scores (dropout off) for 0-255 RGB images, from their rotation-averaged features."""
    return scores_from_outputs(head_outputs(model, rotation_features(feature_extractor(model), images, channels, batch_size)), task)


def output_names(settings: dict) -> list[str]:
    """Column names of the head's outputs: <label>_probability (binary), <label>_p<k> (multiclass), <label> (regression)."""
    if settings["task"] == "multiclass":
        return [f"{settings['label']}_p{k}" for k in range(settings["n_classes"])]
    return [f"{settings['label']}_probability" if settings["task"] == "binary" else settings["label"]]


def is_calibrated(settings: dict) -> bool:
    """Whether a finetuned model's probabilities are rescaled by a stored temperature (temperature scaling was on)."""
    return settings.get("temperature") is not None and settings["task"] != "regression"


def calibrate(outputs: np.ndarray, settings: dict) -> np.ndarray:
    """Head outputs (..., units) rescaled by the model's stored temperature (temperature.apply_temperature);
    unchanged without one (temperature scaling off, or regression)."""
    if not is_calibrated(settings):
        return outputs
    from zoobot_core.temperature import apply_temperature

    return apply_temperature(outputs, float(settings["temperature"]), settings["task"]).astype(np.float32)


def prediction_table(ids: list[str], deterministic: np.ndarray, samples: np.ndarray, settings: dict) -> pd.DataFrame:
    """Per galaxy: the prediction (dropout off), its MC-dropout mean and spread, and the predicted class.

    Columns for label L: binary L_probability, L_probability_mc_mean, L_probability_mc_std, L_predicted
    (P >= the configured threshold); multiclass L_p<k>, its _mc_mean and _mc_std, L_predicted (most
    probable class); regression L, L_mc_mean, L_mc_std.

    A model with a temperature (finetune_config.json `temperature`, from temperature scaling) rescales
    every probability and MC-dropout sample by it (calibrate), and keeps the head's own probability
    as L_probability_raw (L_p<k>_raw). L_predicted is unchanged by it: the raw probability against
    `threshold` (equivalently the rescaled one against `threshold_scaled`), or the most probable class.
    `deterministic` and `samples` are the head's raw outputs.
    """
    from zoobot_core.scores import classify

    label, task = settings["label"], settings["task"]
    columns: dict[str, np.ndarray] = {"id_str": np.asarray(ids, dtype=object)}
    scaled, scaled_samples = calibrate(deterministic, settings), calibrate(samples, settings)
    for k, name in enumerate(output_names(settings)):
        columns[name] = scaled[:, k]
        if is_calibrated(settings):
            columns[f"{name}_raw"] = deterministic[:, k]
        columns[f"{name}_mc_mean"] = scaled_samples[:, :, k].mean(axis=1)
        columns[f"{name}_mc_std"] = scaled_samples[:, :, k].std(axis=1)
    if task != "regression":
        columns[f"{label}_predicted"] = classify(scores_from_outputs(deterministic, task), task, 0.5 if settings["threshold"] is None else settings["threshold"])
    table = pd.DataFrame(columns)
    for col in table.columns[1:]:
        if table[col].dtype.kind == "f":
            table[col] = table[col].astype(np.float32)
    return table


def predict_images(model_dir: Path | str, images: np.ndarray, ids: list[str] | None = None, n_samples: int | None = None,
                   batch_size: int = 32, seed: int = 0) -> pd.DataFrame:
    """Predictions of a finetuned model (finetune's output folder) for 0-255 RGB images (n, size, size, 3)
    already resized to the size it was finetuned at: one row per image, see prediction_table."""
    from zoobot_core.runtime import load_model

    model, settings = load_model(model_dir, FINETUNE_CONFIG)
    expected = model.input_shape[1]
    if images.shape[1:3] != (expected, expected):
        raise ValueError(f"Images are {images.shape[1]}x{images.shape[2]} px; this model was finetuned at {expected} px: resize them (images.load_rgb)")
    features = rotation_features(feature_extractor(model), images, settings["channels"], batch_size)
    samples = head_outputs(model, features, settings["n_samples"] if n_samples is None else n_samples, seed)
    ids = [str(i) for i in range(len(images))] if ids is None else list(ids)
    return prediction_table(ids, head_outputs(model, features), samples, settings)


def survey_shard_files(chunk_dirs: list[Path | str]) -> list[tuple[Path, int]]:
    """Every shard of a survey's chunks in reading order (chunk, then split, then file), with its number of galaxies."""
    from zoobot_core import shards as shard_io

    files = []
    for chunk_dir in map(Path, chunk_dirs):
        counts = pd.read_parquet(chunk_dir / shard_io.MANIFEST, columns=["shard"])["shard"].value_counts()
        for split in (*shard_io.SPLITS, shard_io.UNLABELLED):
            for path in shard_io.shard_paths(chunk_dir, split):
                files.append((Path(path), int(counts.get(f"{split}/{Path(path).name}", 0))))
    return files


def shard_seed(seed: int, shard: str) -> int:
    """The MC-dropout seed of one survey shard (`shard`: <chunk>/<split>/<file>): fixed by the run's seed and the
    shard's name alone, so a shard's samples do not depend on the shards before it (an edit elsewhere in the survey
    leaves its finished predictions valid)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{shard}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def _shard_outputs(model, extractor, settings: dict, path: Path, size: int, encoding: str, batch_size: int, seed: int,
                   n_samples: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, head outputs with dropout off, MC-dropout samples) of one shard's galaxies; the samples of a batch
    are seeded by `seed` (the shard's: shard_seed) plus the shard's galaxies up to it."""
    from zoobot_core.datasets import get_dataset

    ids, deterministic, samples = [], [], []
    for batch in get_dataset([str(path)], [], batch_size, shuffle=False, requested_img_size=size, image_encoding=encoding):
        features = rotation_features(extractor, batch["matrix"].numpy(), settings["channels"], batch_size)
        ids.extend(i.decode() for i in batch["id_str"].numpy())
        deterministic.append(head_outputs(model, features))
        samples.append(head_outputs(model, features, n_samples, seed + len(ids)))
    units = model.output_shape[-1]
    return (ids, np.concatenate(deterministic) if deterministic else np.zeros((0, units), np.float32),
            np.concatenate(samples) if samples else np.zeros((0, n_samples, units), np.float32))


# the modules whose code decides a survey part's numbers (features, head, decoding, temperature, classes)
PREDICTION_CODE = ("finetuned", "preprocess", "datasets", "temperature", "scores", "bases", "model")


def _code_digest() -> str:
    """SHA-256 of the source of the modules that compute survey predictions (PREDICTION_CODE): a part predicted by
    other code is predicted again (Snakemake's code trigger sees only the rule's script, not this library)."""
    import hashlib

    digest = hashlib.sha256()
    for name in PREDICTION_CODE:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


def _parts_key(model_dir: Path, batch_size: int, seed: int, n_samples: int) -> dict:
    """What a survey's finished parts depend on besides their shard: the model's files, the sampling and the code."""
    from zoobot_core.io import file_sha256

    return {"model": file_sha256(model_dir / "model.keras"), "settings": file_sha256(model_dir / FINETUNE_CONFIG),
            "batch_size": batch_size, "seed": seed, "n_samples": n_samples, "code": _code_digest()}


def shard_name(path: Path) -> str:
    """A survey shard's name within its dataset: <chunk folder>/<split>/<file>."""
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


def predict_survey_parts(model_dir: Path | str, chunk_dirs: list[Path | str], parts_dir: Path | str, batch_size: int = 64, seed: int = 0,
                         n_samples: int | None = None) -> list[tuple[Path, Path]]:
    """The finetuned model over every shard of a survey's chunks, one shard at a time: each shard's table (see
    prediction_table) and raw MC-dropout samples written to `parts_dir` as they finish (atomically), named by the
    shard. A rerun (after a kill, or after an edit of the survey rewrote some chunks) keeps every part that finished
    for the same model and sampling and the same shard contents (its SHA-256), and predicts the rest: a part
    depends on its own shard only (shard_seed). Returns the (table, samples) part files in reading order."""
    import json

    from zoobot_core import shards as shard_io
    from zoobot_core.io import atomic_path, atomic_write_table, write_json
    from zoobot_core.runtime import load_model

    model_dir, parts_dir = Path(model_dir), Path(parts_dir)
    model, settings = load_model(model_dir, FINETUNE_CONFIG)
    metadata = {Path(d): shard_io.read_metadata(d) for d in chunk_dirs}
    encodings = {d: m.get("image_encoding", "encoded") for d, m in metadata.items()}
    sizes = {m["size"] for m in metadata.values()}
    if sizes and sizes != {model.input_shape[1]}:
        raise ValueError(f"The survey's shards hold {sorted(sizes)} px images; the model was finetuned at {model.input_shape[1]} px. Rewrite the shards at that size")
    n_samples = settings["n_samples"] if n_samples is None else n_samples
    key = _parts_key(model_dir, batch_size, seed, n_samples)
    key_file = parts_dir / "key.json"
    if parts_dir.exists() and (not key_file.is_file() or json.loads(key_file.read_text()) != key):
        log.info("Predictions in %s are of another model or sampling: starting over", parts_dir)
        import shutil

        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json(key, key_file)
    shard_sha = {}
    for chunk_dir in map(Path, chunk_dirs):
        manifest = pd.read_parquet(chunk_dir / shard_io.MANIFEST, columns=["shard", "shard_sha256"]).drop_duplicates("shard")
        shard_sha.update({chunk_dir / s: h for s, h in zip(manifest["shard"], manifest["shard_sha256"])})
    files = survey_shard_files(chunk_dirs)
    extractor = feature_extractor(model)
    outputs, total, resumed = [], 0, 0
    progress = tqdm(total=sum(n for _, n in files), desc="predicting survey", unit="galaxy", mininterval=10)
    for path, n in files:
        name = shard_name(path)
        stem = "part_" + name.removesuffix(".tfrecord").replace("/", "__")
        table_part, samples_part, done = parts_dir / f"{stem}.parquet", parts_dir / f"{stem}.npy", parts_dir / f"{stem}.json"
        record = {"shard": name, "sha256": shard_sha.get(path), "galaxies": n}
        if not (done.is_file() and json.loads(done.read_text()) == record):
            ids, deterministic, samples = _shard_outputs(model, extractor, settings, path, model.input_shape[1], encodings[path.parent.parent],
                                                         batch_size, shard_seed(seed, name), n_samples)
            if len(ids) != n:
                raise RuntimeError(f"Read {len(ids)} galaxies from {path} but its manifest lists {n}; rewrite the shards (snakemake -R write_finetune_shards)")
            atomic_write_table(prediction_table(ids, deterministic, samples, settings), table_part)
            with atomic_path(samples_part, suffix=".npy") as tmp:
                np.save(tmp, calibrate(samples, settings).transpose(0, 2, 1))
            write_json(record, done)  # last: the part counts as finished only once both files are whole
        else:
            resumed += n
        outputs.append((table_part, samples_part))
        total += n
        progress.update(n)
    progress.close()
    kept = {"key.json", *(f.name for table_part, samples_part in outputs for f in (table_part, samples_part, table_part.with_suffix(".json")))}
    for stale in [f for f in parts_dir.iterdir() if f.name not in kept]:  # shards the survey no longer has, a killed write's temporaries
        stale.unlink()
    if resumed:
        log.info("Kept the predictions of %d of %d survey galaxies (their shards unchanged) in %s", resumed, total, parts_dir)
    return outputs


@leaves_process_state
def predict_survey_files(model_dir: Path | str, chunk_dirs: list[Path | str], predictions_path: Path | str, hdf5_path: Path | str | None = None,
                         batch_size: int = 64, seed: int = 0, threads: int | None = None) -> int:
    """The predict_survey rule: the finetuned model over a survey's shard chunks, streamed one shard at a time
    into Parquet row groups (and, with `hdf5_path`, every MC-dropout sample in Zoobot's HDF5 layout, written slice
    by slice); memory holds one shard's predictions whatever the survey's size. Each shard's predictions stay in
    <predictions_path>.parts/ (about the size of the outputs): a rerun after a kill, or after an edit of the survey
    rewrote some of its chunks, predicts only the shards not already done (predict_survey_parts).
    Returns the number of galaxies."""
    import json

    import pyarrow.parquet as pq

    from zoobot_core.io import atomic_path
    from zoobot_core.runtime import configure_tensorflow

    configure_tensorflow(seed, True, threads)
    parts_dir = Path(str(predictions_path) + ".parts")
    parts = predict_survey_parts(model_dir, chunk_dirs, parts_dir, batch_size, seed)
    settings = json.loads((Path(model_dir) / FINETUNE_CONFIG).read_text())
    n = 0
    with atomic_path(predictions_path) as tmp:
        writer = None
        for table_part, _ in parts:
            table = pq.read_table(table_part)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            n += table.num_rows
        if writer is None:  # no galaxy: an empty table with the columns
            prediction_table([], np.zeros((0, len(output_names(settings))), np.float32), np.zeros((0, 1, len(output_names(settings))), np.float32),
                             settings).to_parquet(tmp, index=False)
        else:
            writer.close()
    if hdf5_path is not None:
        write_survey_hdf5(parts, settings, hdf5_path)
    log.info("Predicted %d survey galaxies with the finetuned model in %s", n, model_dir)
    return n


def write_survey_hdf5(parts: list[tuple[Path, Path]], settings: dict, path: Path | str) -> None:
    """Every MC-dropout sample of the survey's parts in Zoobot's HDF5 layout (hdf5.write_predictions_hdf5's), a
    part at a time."""
    import h5py
    import pyarrow.parquet as pq

    from zoobot_core.io import atomic_path

    shapes = [np.load(s, mmap_mode="r").shape for _, s in parts]
    n, names = sum(shape[0] for shape in shapes), output_names(settings)
    n_samples = shapes[0][2] if shapes else settings["n_samples"]
    strings = h5py.string_dtype(encoding="utf-8")
    attrs = {"task": settings["task"], "label": settings["label"], "mc_dropout_samples": n_samples,
             **({"temperature": float(settings["temperature"])} if is_calibrated(settings) else {})}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        predictions = f.create_dataset("predictions", shape=(n, len(names), n_samples), dtype=np.float32, compression="gzip",
                                       chunks=True if n else None)
        ids = f.create_dataset("id_str", shape=(n,), dtype=strings)
        start = 0
        for table_part, samples_part in parts:
            values = np.load(samples_part)
            predictions[start : start + len(values)] = values
            ids[start : start + len(values)] = pq.read_table(table_part, columns=["id_str"]).column(0).to_pylist()
            start += len(values)
        f.create_dataset("label_cols", data=np.asarray(names, dtype=object), dtype=strings)
        for key, value in attrs.items():
            f.attrs[key] = value
    log.info("Wrote %d galaxies x %d outputs x %d samples to %s", n, len(names), n_samples, path)

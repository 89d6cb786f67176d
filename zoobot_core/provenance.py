"""Provenance of a run: the resolved config, package versions, project commit, seeds, input and shard checksums."""

from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from zoobot_core.catalog import FILE, ID
from zoobot_core.hardware import cpu_description
from zoobot_core.io import atomic_write_table, file_sha256, write_json

log = logging.getLogger(__name__)

PACKAGES = (
    "tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "pillow", "scikit-learn",
    "scipy", "protobuf", "snakemake", "snakemake-executor-plugin-slurm", "zoobot-core",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers (absent ones left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state(repo: Path | str) -> dict[str, str | bool] | None:
    """The project's commit and whether the working tree had changes; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def digest(values: list[str]) -> str:
    """One SHA-256 over an ordered list of strings (e.g. per-file checksums)."""
    return hashlib.sha256("\n".join(values).encode()).hexdigest()


def image_checksums(validated: pd.DataFrame, workers: int = 4) -> pd.DataFrame:
    """id, file and SHA-256 of every validated source image, in id order."""
    rows = validated[[ID, FILE]].sort_values(ID).reset_index(drop=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashing releases the GIL; reading is I/O
        sums = list(tqdm(pool.map(file_sha256, rows[FILE]), total=len(rows), desc="hashing images", mininterval=10))
    return rows.assign(sha256=sums)


def write_provenance(
    config: dict,
    catalog_path: Path | str,
    validated_path: Path | str,
    shard_dir: Path | str,
    out_path: Path | str,
    images_out: Path | str,
    repo: Path | str,
    hash_images: bool = True,
    workers: int = 4,
    model_config_path: Path | str | None = None,
) -> dict:
    """Write provenance.json (and the per-image checksums as Parquet); return the provenance dict.

    With `model_config_path`, the training job's environment (CPU, instruction sets, GPUs, oneDNN, threads)
    is copied in: on a cluster it is another machine than this job's, and it decides the model's last bits.
    """
    manifest = pd.read_parquet(Path(shard_dir) / "manifest.parquet")
    shards = manifest.drop_duplicates("shard")[["shard", "shard_sha256"]].sort_values("shard")
    provenance = {
        "config": config,
        "seed": config.get("seed"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "packages": package_versions(),
        "project": git_state(repo),
        "inputs": {"catalog": str(catalog_path), "catalog_sha256": file_sha256(catalog_path)},
        "shards": {
            "n_galaxies": len(manifest),
            "files": dict(zip(shards["shard"], shards["shard_sha256"])),
            "digest": digest([f"{s} {c}" for s, c in zip(shards["shard"], shards["shard_sha256"])]),
            "manifest_sha256": file_sha256(Path(shard_dir) / "manifest.parquet"),
        },
    }
    if model_config_path is not None:
        import json

        provenance["training_environment"] = json.loads(Path(model_config_path).read_text()).get("environment")
    if hash_images and "source_sha256" in manifest:  # taken by write_shards as it read each image
        files = pd.read_parquet(validated_path, columns=[ID, FILE])
        images = manifest[[ID, "source_sha256"]].rename(columns={"source_sha256": "sha256"}).merge(files, on=ID, how="left", validate="one_to_one")
        images = images[[ID, FILE, "sha256"]].sort_values(ID).reset_index(drop=True)
        unhashed = images["sha256"].isna()  # chunks written while provenance.hash_images was off: hashed here
        if unhashed.any():
            log.info("Hashing %d source images whose shard chunks were written without their checksums", unhashed.sum())
            images.loc[unhashed, "sha256"] = image_checksums(images[unhashed], workers).set_index(ID).loc[images.loc[unhashed, ID], "sha256"].to_numpy()
        atomic_write_table(images, images_out)
        provenance["inputs"].update(n_images=len(images), images_digest=digest([f"{i} {c}" for i, c in zip(images[ID], images["sha256"])]))
    elif hash_images:
        images = image_checksums(pd.read_parquet(validated_path), workers)
        atomic_write_table(images, images_out)
        provenance["inputs"].update(n_images=len(images), images_digest=digest([f"{i} {c}" for i, c in zip(images[ID], images["sha256"])]))
    else:
        atomic_write_table(pd.DataFrame(columns=[ID, FILE, "sha256"]), images_out)
        provenance["inputs"].update(n_images=None, images_digest=None)
    write_json(provenance, out_path)
    log.info("Provenance written to %s (shards digest %s)", out_path, provenance["shards"]["digest"][:12])
    return provenance

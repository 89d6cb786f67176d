"""Shards written before, kept so that writing a catalog chunk again reuses every shard whose galaxies are unchanged.

A chunk's job rewrites the whole chunk folder (its galaxies changed), but its shards are hash buckets of the ids
(shard_plan.shard_groups): adding a galaxy changes its own shard alone. Each shard file written is also hard-linked
into a cache folder beside the chunks (no second copy on disk), under a key that is the SHA-256 of everything its
bytes depend on: the shard's name, its galaxies (id, source file, the file's size and modification time, labels),
the shard settings, the resize settings, whether source images are hashed, and the code that writes them. The next
write of the chunk links the unchanged shards back (no image read) and writes the rest. A shard with an unreadable
image is never cached, so a file fixed in place is read again. Gathering prunes keys no chunk lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from zoobot_core.io import write_json
from zoobot_core.shard_plan import ShardGroup

log = logging.getLogger(__name__)

CACHE_DIR = ".shard_cache"  # beside a catalog's chunk folders
# the modules whose code decides a shard's bytes
WRITER_CODE = ("images", "fits_images", "shard_writer", "shard_plan", "tfrecord", "splits")


def _code_digest() -> str:
    digest = hashlib.sha256()
    for name in WRITER_CODE:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


class ShardCache:
    """Finished shards in `folder` by key (<key>.tfrecord, a hard link to the shard file, and <key>.json, its records'
    ids and source checksums and its SHA-256), for shards written with `settings`, `resize` and `hash_images`."""

    def __init__(self, folder: Path | str, settings, resize, hash_images: bool):
        self.folder = Path(folder)
        context = {"settings": dataclasses.asdict(settings), "resize": repr(resize), "hash_images": hash_images, "code": _code_digest()}
        self._context = json.dumps(context, sort_keys=True, default=str).encode()
        self.used: dict[str, str] = {}  # shard -> key, for the shards of the folder being written

    def key(self, group: ShardGroup) -> str:
        """The SHA-256 of what the shard's bytes depend on (module docstring); a source file that cannot be
        stat'ed gives a key no cache entry has."""
        digest = hashlib.sha256(self._context)
        digest.update(group.shard.encode())
        for id_str, source, labels in zip(group.ids, group.sources, group.labels):
            try:
                info = os.stat(source)
                stamp = f"{info.st_size}:{info.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            digest.update(f"\n{id_str}\0{source}\0{stamp}\0{','.join(map(repr, labels.tolist()))}".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def fetch(self, group: ShardGroup, root: Path) -> dict | None:
        """The cached shard of `group` linked into root/<shard>, and its record ({"written": [[id, source sha or
        None], ...], "sha256": ...}); None when not cached."""
        key = self.key(group)
        record_file, shard_file = self.folder / f"{key}.json", self.folder / f"{key}.tfrecord"
        if not (record_file.is_file() and shard_file.is_file()):
            return None
        record = json.loads(record_file.read_text())
        _link(shard_file, root / group.shard)
        self.used[group.shard] = key
        return record

    def store(self, group: ShardGroup, shard_file: Path, written: list[tuple[str, str | None]], sha256: str | None) -> None:
        """Keep a shard just written (every galaxy in it: none unreadable) under its key: the file linked in first,
        the record last, so an entry is whole or absent."""
        key = self.key(group)
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{key}.tfrecord.tmp"
        _link(shard_file, partial)
        os.replace(partial, self.folder / f"{key}.tfrecord")
        write_json({"written": [list(r) for r in written], "sha256": sha256}, self.folder / f"{key}.json")
        self.used[group.shard] = key


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy), or a copy where the two are on different file systems."""
    try:
        if target.exists():
            target.unlink()
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def prune(folder: Path | str, keep: set[str]) -> int:
    """Remove the cache entries (and leftover temporaries) of `folder` whose key is not in `keep`; how many keys went."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    gone = set()
    for path in folder.iterdir():
        key = path.name.lstrip(".").split(".")[0]
        if key not in keep or path.name.startswith("."):
            path.unlink()
            gone.add(key)
    if gone:
        log.info("Shard cache %s: %d shards no chunk holds now removed", folder, len(gone - keep))
    return len(gone - keep)

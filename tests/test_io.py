"""Shared writing helpers: JSON that strict readers accept; writes that a kill at any point leaves whole or undone."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zoobot_core.io import write_json


def test_json_has_null_for_nan_and_plain_numbers_for_numpy_scalars(tmp_path):
    write_json({"auc": float("nan"), "folds": [np.float32(0.5), np.int64(3), math.inf], "nested": {"r2": np.float64("nan")}}, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "folds": [0.5, 3, None], "nested": {"r2": None}}


def test_atomic_dir_removes_what_a_killed_earlier_writer_left(tmp_path):
    """SIGKILL gives atomic_dir no chance to clean up: the next write of the same output removes the leftovers."""
    from zoobot_core.io import atomic_dir

    target = tmp_path / "chunk_1"
    for stale in (tmp_path / ".chunk_1.abc123.tmp", tmp_path / ".chunk_1.zz9.tmp"):
        stale.mkdir()
        (stale / "half.png").write_bytes(b"x")
    other = tmp_path / ".chunk_10.abc.tmp"  # another output's temporary: not ours to remove
    other.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "done.png").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".chunk_10.abc.tmp", "chunk_1"]
    assert (target / "done.png").read_bytes() == b"y"


_KILLED_WRITERS = """
import os
import sys
from pathlib import Path
from zoobot_core.io import atomic_dir, atomic_path

folder = Path(sys.argv[1])
# every temporary the package's writers make: tables and JSON, Keras models, Keras weights, image folders; and a
# neighbour's (another output whose name starts with ours), whose temporary is not ours to remove
with atomic_path(folder / "model.keras", suffix=".keras") as model, atomic_path(folder / "latest.weights.h5", suffix=".weights.h5") as weights, \\
        atomic_path(folder / "history.csv") as table, atomic_dir(folder / "chunk_1") as chunk, atomic_path(folder / "model.keras.bak") as neighbour:
    for tmp in (model, weights, table, neighbour):
        tmp.write_bytes(b"half written")
    (chunk / "half.png").write_bytes(b"x")
    os._exit(137)  # SIGKILL: no finally, no cleanup
"""


def test_every_writer_s_temporary_left_by_a_kill_is_removed_by_the_next_write(tmp_path):
    """Killed writers left `.model.keras.*.keras` and `.latest.weights.h5.*.weights.h5` behind for ever (only `*.tmp` were
    recognised): tens of MB per preempted save. Now every temporary is named by one scheme that the cleanup matches."""
    from zoobot_core.io import atomic_dir, atomic_path

    assert subprocess.run([sys.executable, "-c", _KILLED_WRITERS, str(tmp_path)]).returncode == 137
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 5 and not any(p.startswith(("model.keras", "latest", "history", "chunk")) for p in left), left
    neighbour = [name for name in left if name.startswith(".model.keras.bak.")]
    assert len(neighbour) == 1

    for name, suffix in (("model.keras", ".keras"), ("latest.weights.h5", ".weights.h5"), ("history.csv", "")):
        with atomic_path(tmp_path / name, suffix=suffix) as tmp:
            tmp.write_bytes(b"whole")
    with atomic_dir(tmp_path / "chunk_1") as tmp:
        (tmp / "done.png").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["chunk_1", "history.csv", "latest.weights.h5", "model.keras", *neighbour])


def test_temporaries_named_by_earlier_versions_are_removed_too(tmp_path):
    """Leftovers of the naming used before (`.NAME.XXXXXXXX.keras`, `.NAME.XXXXXXXX.weights.h5`) are reclaimed as well."""
    from zoobot_core.io import atomic_path

    for stale in (".model.keras.ab_c1234.keras", ".latest.weights.h5.k9x0qwer.weights.h5"):
        (tmp_path / stale).write_bytes(b"half written")
    (tmp_path / ".model.keras.notes").write_text("a user's file, not a temporary")
    with atomic_path(tmp_path / "model.keras", suffix=".keras") as tmp:
        tmp.write_bytes(b"whole")
    with atomic_path(tmp_path / "latest.weights.h5", suffix=".weights.h5") as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.keras.notes", "latest.weights.h5", "model.keras"]


# dies before the `kill_at`-th rename or removal that atomic_dir makes once the block's work is done (never, past the last)
_KILLED_COMMIT = """
import os
import shutil
import sys
from pathlib import Path
from zoobot_core.io import atomic_dir

target, kill_at = Path(sys.argv[1]), int(sys.argv[2])
armed, done = [False], [0]

def dying(operation):
    def wrapped(*args, **kwargs):
        if armed[0]:
            if done[0] == kill_at:
                os._exit(137)
            done[0] += 1
        return operation(*args, **kwargs)
    return wrapped

os.replace, os.rename, shutil.rmtree = (dying(op) for op in (os.replace, os.rename, shutil.rmtree))
with atomic_dir(target) as tmp:
    (tmp / "1.png").write_text("new")
    (tmp / "3.png").write_text("new")
    armed[0] = True
"""


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kill_at", range(5))
def test_atomic_dir_killed_at_any_step_of_its_commit_leaves_the_old_or_the_new_folder_whole(tmp_path, kill_at):
    """atomic_dir removed the old folder before moving the new one in: a kill between the two left neither."""
    from zoobot_core.io import atomic_dir

    old, new = {"1.png": "old", "2.png": "old"}, {"1.png": "new", "3.png": "new"}
    target = tmp_path / "chunk_1"
    target.mkdir()
    for name, text in old.items():
        (target / name).write_text(text)
    assert subprocess.run([sys.executable, "-c", _KILLED_COMMIT, str(target), str(kill_at)]).returncode in (0, 137)
    # right after the kill: one whole copy, at the target or (mid-swap) beside it under a recognisable name
    whole = [_contents(p) for p in tmp_path.iterdir() if p.is_dir() and _contents(p) in (old, new)]
    assert whole, sorted(p.name for p in tmp_path.rglob("*"))
    committed = _contents(target) if target.exists() else None

    # the next writer of the target fails: the target is then the folder the killed commit left, whole
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "1.png").write_text("failed")
        raise RuntimeError("the next attempt fails too")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_1"], "no temporary or set-aside folder left"
    assert _contents(target) in (old, new) and (committed is None or _contents(target) == committed)

    with atomic_dir(target) as tmp:
        (tmp / "4.png").write_text("newest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_1"] and _contents(target) == {"4.png": "newest"}

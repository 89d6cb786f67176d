"""zoobot_core.tfrecord writes the bytes TensorFlow's own writer writes, without importing TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest

from zoobot_core.io import file_sha256
from zoobot_core.tfrecord import ExampleLayout, TFRecordWriter, example_bytes


def _tensorflow_example(features: dict) -> bytes:
    import tensorflow as tf

    feature = {}
    for key, value in features.items():
        if isinstance(value, bytes):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        else:
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def test_records_and_files_are_byte_identical_to_tensorflows(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    examples = [
        {"id_str": b"J000000.00+000000.0", "matrix": rng.integers(0, 256, 224 * 224 * 3, dtype=np.uint8).tobytes(),
         "smooth-or-featured_smooth": [12.0], "a": [0.1], "Z_upper": [-3.5e-8], "bar_no": [1e30]},
        {"id_str": b"", "matrix": b"", "empty": []},  # an unlabelled galaxy's kind of record, and edge cases
        {"id_str": "é-ünïcode".encode(), "matrix": bytes(200), "votes": [1.0, 2.0, float(np.float32(1 / 3))]},
    ]
    for features in examples:
        assert example_bytes(features) == _tensorflow_example(features)
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "theirs.tfrecord"
    with TFRecordWriter(ours) as writer:
        for features in examples:
            writer.write(example_bytes(features))
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for features in examples:
            writer.write(_tensorflow_example(features))
    assert ours.read_bytes() == theirs.read_bytes()
    read = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(ours))]  # TensorFlow checks the CRCs as it reads
    assert read == [example_bytes(f) for f in examples]


@pytest.mark.parametrize("seed", range(4))
def test_the_fast_layout_encodes_the_same_bytes(tmp_path, seed):
    """ExampleLayout (what the shard writer uses) gives example_bytes' bytes for any keys: bytes keys sorted among the
    float keys, long keys (two-byte varints), empty, small and image-sized values; written in pieces, the file is the
    same as written whole, and its running SHA-256 is the file's."""
    rng = np.random.default_rng(seed)
    names = ["id_str", "matrix", "a", "Z_upper", "k" * 200, "é", "smooth-or-featured_smooth", "m", "ida", *[f"col-{i}" for i in range(40)]]
    chosen = [names[i] for i in rng.permutation(len(names))[: int(rng.integers(2, len(names)))]]
    n_bytes = int(rng.integers(0, 4))
    bytes_keys, float_keys = chosen[:n_bytes], chosen[n_bytes:]
    layout = ExampleLayout(bytes_keys, float_keys)
    whole, pieces = tmp_path / "whole.tfrecord", tmp_path / "pieces.tfrecord"
    with TFRecordWriter(whole) as by_record, TFRecordWriter(pieces) as by_piece:
        for size in (0, 5, 127, 128, 1023, 1024, 224 * 224 * 3):
            values = {key: rng.integers(0, 256, size, dtype=np.uint8).tobytes() for key in bytes_keys}
            floats = (rng.normal(size=len(float_keys)) * 10.0 ** rng.integers(-30, 30, len(float_keys))).tolist()
            expected = example_bytes({**values, **{key: [value] for key, value in zip(float_keys, floats)}})
            parts = layout.pieces(values, floats)
            assert b"".join(parts) == expected
            assert all(any(part is value for part in parts) for value in values.values() if len(value) >= 1024)  # never copied
            by_record.write(expected)
            by_piece.write_pieces(parts)
    assert whole.read_bytes() == pieces.read_bytes()
    assert by_piece.sha256 == file_sha256(pieces)
    with pytest.raises(ValueError, match="Expected"):
        layout.pieces({key: b"" for key in bytes_keys}, [1.0] * (len(float_keys) + 1))
    with pytest.raises(ValueError, match="Expected bytes values"):
        layout.pieces({key: b"" for key in [*bytes_keys, "not_a_key"]}, [1.0] * len(float_keys))


def test_writing_shards_does_not_start_tensorflow(tiny_shards, tmp_path):
    code = (
        "import sys; from zoobot_core.shards import read_catalog, read_metadata, ShardSettings; from zoobot_core.shard_writer import write_shards;"
        f"meta = read_metadata({str(tiny_shards)!r});"
        f"write_shards(read_catalog({str(tiny_shards)!r}), {str(tmp_path / 'again')!r}, ShardSettings(size=32, label_cols=tuple(meta['label_cols']), shard_size=16, train_fraction=0.6, val_fraction=0.2));"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for path in tiny_shards.rglob("*.tfrecord"):  # and the same shards as before
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tiny_shards)).read_bytes()

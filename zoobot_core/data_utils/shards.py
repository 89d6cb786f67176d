"""Zoobot's `ShardConfig` under `data_utils`; the implementation lives in `zoobot_core.shards`."""

from zoobot_core.shard_config import ShardConfig

__all__ = ["ShardConfig"]

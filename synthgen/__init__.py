"""synthgen: a parallel, deterministic compositor of salient objects onto scene backgrounds.

Data flow, one module per step:
sources -> plan (scene plan) -> transforms + placement (compositor) -> shards (writer) -> reader.
"""
from common import __version__

from synthgen.reader import ShardSet  # the entry point for downstream code

__all__ = ["ShardSet", "__version__"]

"""synthgen: a parallel, deterministic compositor of salient objects onto scene backgrounds.

Data flow, one module per step:
sources -> plan (scene plan) -> transforms + placement (compositor) -> shards (writer) -> reader.
"""
import os

# albumentations looks for updates on import; many clusters have no network, so the check would
# only stall. Set before any module imports albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from common import __version__  # noqa: E402

from synthgen.reader import ShardSet  # noqa: E402  (the entry point for downstream code)

__all__ = ["ShardSet", "__version__"]

"""Shared test helpers: real files on disk, the real CLI, the real sample data when present."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from synthgen.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_OBJECTS = SHARED / "data" / "thus10000-sample"
REAL_SCENES = SHARED / "data" / "scenes-bsds500"

# Small, fast builds: 64-pixel images, sequential unless a test asks for workers.
FAST = ["--size", "64", "--no-progress", "--workers", "1"]


@contextlib.contextmanager
def lock_held_elsewhere(folder, name: str):
    """Another process holding `folder` with the lock of command `name` (common.locks) for the block; yields it
    (its pid is the holder's). It exits holding the lock: the file stays, the lock dies with the process."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from common.locks import FolderLock; "
                               f"FolderLock({str(folder)!r}, {name!r}).acquire(); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.communicate("")


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int):
    """A real memory cgroup limited to `limit_bytes` (v1 or v2), as a container or a batch scheduler makes; yields
    its cgroup.procs file, to which a process writes its pid to run inside. Skips where this user cannot make one
    (not root, or no writable cgroup file system)."""
    candidates = [(Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"), (Path("/sys/fs/cgroup"), "memory.max")]
    for root, limit_name in candidates:
        if (root / limit_name).exists() or (root / "cgroup.subtree_control").exists():
            break
    else:
        pytest.skip("no cgroup file system with a memory controller here")
    group = root / f"subitizing-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit_name).write_text(str(limit_bytes))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here ({exc.strerror}): needs root and a writable cgroup fs")
    try:
        yield group / "cgroup.procs"
    finally:
        for _ in range(50):  # the processes it held have exited; the kernel lets it go a moment later
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real sample data is only in ../shared beside the checkout")
    return path


@pytest.fixture
def real_objects() -> Path:
    return _need(REAL_OBJECTS)


@pytest.fixture
def real_scenes() -> Path:
    return _need(REAL_SCENES)


@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
def synthgen(capsys):
    """Run the real `synthgen` command line in-process; returns exit code and output."""

    def run(*args) -> Result:
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run


def write_object_pair(folder: Path, name: str, rng, size=(90, 70)) -> None:
    """A real JPEG of a textured ellipse and its PNG mask (0/255), the THUS10000 layout."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * rng.uniform(0.25, 0.45)), int(h * rng.uniform(0.25, 0.45))),
                float(rng.uniform(0, 180)), 0, 360, 255, -1)
    image = (rng.random((h, w, 3)) * 60 + rng.integers(60, 190, 3)).astype(np.uint8)
    cv2.imwrite(str(folder / f"{name}.jpg"), image)
    cv2.imwrite(str(folder / f"{name}.png"), mask)


def make_objects(folder: Path, n: int = 6, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        write_object_pair(folder, f"obj{k:03d}", rng)
    return folder


def make_scenes(folder: Path, n: int = 6, seed: int = 0) -> Path:
    """Real JPEG scenes in SUN397-like nested category folders, landscape and portrait."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        category = folder / "abc"[k % 3] / f"category{k % 2}"
        category.mkdir(parents=True, exist_ok=True)
        shape = (120, 160, 3) if k % 2 else (160, 110, 3)
        cv2.imwrite(str(category / f"scene{k}.jpg"), (rng.random(shape) * 255).astype(np.uint8))
    return folder


def read_set(out_dir) -> dict[str, np.ndarray]:
    """Every dataset of every shard of a set, concatenated in shard order (object tables too)."""
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    parts: dict[str, list] = {}
    for shard in manifest["shards"]:
        with h5py.File(Path(out_dir) / shard["file"], "r") as f:
            f.visititems(lambda name, obj: parts.setdefault(name, []).append(obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    return {name: np.concatenate(chunks) if name != "object_offset" else chunks for name, chunks in parts.items()}


def not_json(constant: str):
    raise AssertionError(f"{constant} is not JSON (RFC 8259): many readers refuse the file")


def strict_json(path):
    """A JSON file read as strict readers (R's jsonlite, JavaScript) read it: NaN or Infinity fails."""
    return json.loads(Path(path).read_text(), parse_constant=not_json)


def manifest_of(out_dir) -> dict:
    return strict_json(Path(out_dir) / "manifest.json")


def assert_same_sets(one, two) -> None:
    """Two sets hold the same datasets, array for array (object offsets shard by shard), and the same shard
    checksums."""
    a, b = read_set(one), read_set(two)
    assert a.keys() == b.keys()
    for name in a:
        if name == "object_offset":
            assert len(a[name]) == len(b[name]) and all(np.array_equal(x, y) for x, y in zip(a[name], b[name]))
        else:
            assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name  # NaN: no such label
    assert [s["content_sha256"] for s in manifest_of(one)["shards"]] == \
           [s["content_sha256"] for s in manifest_of(two)["shards"]]


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they run by path, not as a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained_like_vgg19():
    """A truncated VGG-19 whose first-layer filters are smooth ramps, as ImageNet-trained ones are smooth, so that
    vae.vgg takes its saved weights for trained ones (it refuses random ones); the rest stays random."""
    import torch

    from vae.vgg import truncated_vgg19

    vgg = truncated_vgg19()
    level, across, down = torch.randn(3, 64, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    ramp = torch.linspace(-1, 1, 3)
    with torch.no_grad():
        vgg[0].weight.copy_(0.1 * (level + across * ramp.view(1, 1, 1, 3) + down * ramp.view(1, 1, 3, 1)))
    return vgg

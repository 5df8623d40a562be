"""One line that names the machine a figure was measured on, by what it is: the processor, the cores this
process may use, the memory, the GPU, and the versions of the libraries that did the work.

Every benchmark prints it above its table, so that each entry of benchmarks/RESULTS.md can name its machine
the same way. `platform.processor()`, which some printed before, is empty on Linux (they then printed "x86_64").
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# The libraries a figure can depend on, by the name that is printed: the module to import and how to read
# its version. Imported only when asked for, so a benchmark of synthgen never pays for importing torch.
LIBRARIES = {
    "numpy": ("numpy", lambda m: m.__version__),
    "OpenCV": ("cv2", lambda m: m.__version__),
    "h5py": ("h5py", lambda m: f"{m.__version__} (HDF5 {m.version.hdf5_version})"),
    "joblib": ("joblib", lambda m: m.__version__),
    "albumentations": ("albumentations", lambda m: m.__version__),
    "torch": ("torch", lambda m: m.__version__),
    "triton": ("triton", lambda m: m.__version__),
    "statsmodels": ("statsmodels", lambda m: m.__version__),
}
# Datasheet figures of the GPUs the benchmarks set their measurements against, by a part of the name torch gives
# the card (torch.cuda.get_device_name): the bf16 dense peak and the memory bandwidth.
GPU_BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}
GPU_MEMORY_TBPS = {"H100 80GB HBM3": 3.35, "H100 PCIe": 2.0, "H200": 4.8, "L4": 0.3}  # A100s differ by model


def datasheet(table: dict[str, float], gpu_name: str) -> float | None:
    """The figure `table` (GPU_BF16_TFLOPS, GPU_MEMORY_TBPS) gives the card named `gpu_name`; None for a card not
    in it."""
    return next((value for part, value in table.items() if part in gpu_name), None)


def cpu_model() -> str:
    """The processor's model name as the kernel reports it, or the architecture where it reports none."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as info:
            kib = next(int(line.split()[1]) for line in info if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return None
    return kib / 2**20


def available_memory() -> int | None:
    """Bytes of memory this process can still take without pushing others out: the kernel's MemAvailable
    (free memory and the page cache it can drop; free memory alone misses the cache a set just written
    fills), or less where the process's cgroup (a container) limits it. None where it cannot be read."""
    try:
        with open("/proc/meminfo") as info:
            available = next(int(line.split()[1]) for line in info if line.startswith("MemAvailable:")) * 1024
    except (OSError, StopIteration, ValueError):
        return None
    room = cgroup_room()
    return available if room is None else min(available, room)


def cgroup_room() -> int | None:
    """What this process's memory cgroup still allows (v2, or v1 as a batch scheduler or container sets it);
    None without a limit. The group's usage counts its page cache, which the kernel drops before it runs out:
    like Kubernetes' working set, the inactive file cache is not counted as used."""
    try:
        with open("/proc/self/cgroup") as groups:
            lines = [line.strip().split(":", 2) for line in groups]
    except OSError:
        return None
    candidates = []
    for _, controllers, path in (parts for parts in lines if len(parts) == 3):
        path = path.rstrip("/")
        if controllers == "":
            candidates.append((f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup{path}/memory.current"))
        elif "memory" in controllers.split(","):
            for folder in (f"/sys/fs/cgroup/memory{path}", "/sys/fs/cgroup/memory"):  # the latter in a container
                candidates.append((f"{folder}/memory.limit_in_bytes", f"{folder}/memory.usage_in_bytes"))
    for limit_file, usage_file in candidates:
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                text, used = limit.read().strip(), int(usage.read())
        except (OSError, ValueError):
            continue
        # v1 writes "no limit" as a number near 2**63
        if text == "max" or int(text) >= 1 << 60:
            return None
        return max(0, int(text) - used + inactive_file_cache(Path(limit_file).with_name("memory.stat")))
    return None


def inactive_file_cache(stat_file: Path) -> int:
    """The inactive page cache of a memory cgroup and the groups below it, as its usage counts them (v1
    "total_inactive_file", v2 "inactive_file"), 0 if unknown."""
    try:
        stats = dict(line.split() for line in stat_file.read_text().splitlines() if len(line.split()) == 2)
        return int(stats.get("total_inactive_file", stats.get("inactive_file", 0)))
    except (OSError, ValueError):
        return 0


def gpus() -> list[str]:
    """The CUDA devices torch sees, with the CUDA and cuDNN versions it runs them with; [] without torch."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    stack = f"CUDA {torch.version.cuda}" + (f", cuDNN {cudnn_version(torch.backends.cudnn.version())}"
                                            if torch.backends.cudnn.is_available() else "")
    return [f"{torch.cuda.get_device_name(k)} ({stack})" for k in range(torch.cuda.device_count())]


def cudnn_version(number: int) -> str:
    """cuDNN's version number as major.minor.patch: 91900 is 9.19.0 (from cuDNN 9 on), 8902 is 8.9.2."""
    major, rest = (number // 10000, number % 10000) if number >= 10000 else (number // 1000, number % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def library_version(name: str) -> str:
    """`name` and its version, or that it is not installed; `name` is a key of LIBRARIES."""
    if name not in LIBRARIES:
        raise ValueError(f"library {name!r}: choose among {', '.join(LIBRARIES)}")
    module, version = LIBRARIES[name]
    try:
        return f"{name} {version(__import__(module))}"
    except ImportError:
        return f"{name} not installed"


def describe(*libraries: str, gpu: bool = False) -> str:
    """E.g. "AMD EPYC 7B13, 2 cores, 23 GiB RAM, Python 3.11.7, numpy 2.4.6, OpenCV 5.0.0".

    With gpu=True the CUDA devices come after the memory (and torch's version is worth listing then)."""
    parts = [cpu_model(), f"{cores()} cores"]
    memory = memory_gib()
    if memory is not None:
        parts.append(f"{memory:.0f} GiB RAM")
    if gpu:
        parts += gpus() or ["no CUDA device"]
    parts.append(f"Python {platform.python_version()}")
    parts += [library_version(name) for name in libraries]
    return ", ".join(parts)

"""common.machine: the line every benchmark prints to name its machine."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from common import machine


def test_the_line_names_cores_python_and_the_libraries_asked_for():
    line = machine.describe("numpy", "OpenCV")
    fields = line.split(", ")
    assert f"{len(os.sched_getaffinity(0))} cores" in fields
    assert f"Python {platform.python_version()}" in fields
    assert fields[-2:] == [f"numpy {np.__version__}", f"OpenCV {cv2.__version__}"]
    assert "torch" not in line and "CUDA" not in line  # only what was asked for


def test_the_processor_is_named_by_its_model_where_the_kernel_gives_one():
    # platform.processor(), which benchmarks once printed, is "x86_64" or empty on Linux
    if not os.path.exists("/proc/cpuinfo") or "model name" not in open("/proc/cpuinfo").read():
        pytest.skip("no processor model name in /proc/cpuinfo on this machine")
    assert machine.cpu_model() not in ("", platform.machine(), platform.processor())
    assert machine.describe().startswith(machine.cpu_model() + ", ")


def test_the_gpu_field_says_what_torch_sees():
    line = machine.describe("torch", gpu=True)
    assert f"torch {torch.__version__}" in line
    assert ("no CUDA device" in line) == (not torch.cuda.is_available())


def test_cudnn_version_numbers_of_both_schemes():
    assert machine.cudnn_version(91900) == "9.19.0"  # cuDNN 9: major * 10000 + minor * 100 + patch
    assert machine.cudnn_version(90100) == "9.1.0"
    assert machine.cudnn_version(8902) == "8.9.2"  # cuDNN 8: major * 1000 + minor * 100 + patch


def test_an_unknown_library_is_refused_and_a_missing_one_said(monkeypatch):
    with pytest.raises(ValueError, match="'numpyy'.*numpy"):
        machine.describe("numpyy")
    monkeypatch.setitem(machine.LIBRARIES, "absent", ("a_module_that_is_not_installed", lambda m: m.__version__))
    assert machine.library_version("absent") == "absent not installed"


def test_a_synthgen_benchmark_does_not_import_torch_to_name_its_machine():
    # describe() imports only the libraries it is asked for: importing torch costs seconds and memory
    code = ("import sys; from common.machine import describe; "
            "describe('numpy', 'OpenCV', 'h5py', 'joblib'); print('torch' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_available_memory_is_what_the_kernel_can_give_without_swapping():
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo on this machine")
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/meminfo")}
    available, room = machine.available_memory(), machine.cgroup_room()
    expected = meminfo["MemAvailable"] if room is None else min(room, meminfo["MemAvailable"])
    # MemAvailable counts the page cache the kernel can drop, which free memory alone (MemFree) misses; the two
    # readings are a moment apart, so they may differ by what other processes took meanwhile
    assert 0 < available <= meminfo["MemTotal"]
    assert abs(available - expected) < 512 << 20


def test_a_card_is_found_in_the_datasheet_tables_by_a_part_of_its_name():
    assert machine.datasheet(machine.GPU_MEMORY_TBPS, "NVIDIA H100 80GB HBM3") == 3.35
    assert machine.datasheet(machine.GPU_BF16_TFLOPS, "NVIDIA H100 PCIe") == 756.0
    assert machine.datasheet(machine.GPU_MEMORY_TBPS, "NVIDIA A100-SXM4-80GB") is None  # its bandwidth differs by model

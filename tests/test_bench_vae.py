"""benchmarks/bench_vae.py --profile: the convolutions layer by layer, from a real profile of real steps."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import load_benchmark
from vae.losses import Objective, PerceptualLoss
from vae.model import VAE, ModelConfig
from vae.vgg import RANDOM, load_vgg

# strided convolutions down, transposed ones up, and a perceptual loss whose VGG-19 runs twice a step
SMALL = ModelConfig(image_size=32, encoder="8@4x4-2,16@4x4-2", decoder="16@3x3-2,8@3x3-2", latent=4)


def _step(objective, x, noise):
    objective(x, noise)["loss"].backward()


@pytest.mark.filterwarnings("ignore:--vgg-weights random")  # the speed and shapes are the same
def test_the_convolution_rows_add_up_to_the_flop_counter_and_name_their_layers():
    bench = load_benchmark("bench_vae")
    torch.manual_seed(0)
    objective = Objective(VAE(SMALL), PerceptualLoss(load_vgg(RANDOM)[0]), 1.0, 0.03)
    x, noise = torch.rand(2, 3, 32, 32), torch.randn(2, 4)
    with FlopCounterMode(display=False) as counter:
        _step(objective, x, noise)
    counted = sum(flops for op, flops in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    steps = 2
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            _step(objective, x, noise)
    table = bench.conv_table(profiler.events(), bench.conv_layers(objective), steps, cuda=False)

    assert counted > 0 and abs(sum(row["gflop"] for row in table) * 1e9 - counted) <= 1e-6 * counted
    rows = {(row["layer"], row["work"]): row for row in table}
    # every convolution of the model and of the loss network, each pass once, named by its module
    layers = [name for name, m in objective.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert {layer for layer, _ in rows} == set(layers) and "?" not in {row["layer"] for row in table}
    for layer in layers:
        assert (layer, "forward") in rows
    # the first convolution of each network has no input gradient to compute: its input is the image
    assert ("net.encoder.0", "backward: weight") in rows
    assert ("net.decoder.0", "backward: input and weight") in rows
    # the VGG-19 runs on x (no gradient) and on the reconstruction: two forwards and one backward a step
    assert rows[("reconstruction.vgg.0", "forward")]["calls"] == 2
    # ... and, frozen, computes no weight gradient: its backward is the gradient of its input only
    assert rows[("reconstruction.vgg.2", "backward: input")]["calls"] == 1
    assert not any(layer.startswith("reconstruction.") and "weight" in work for layer, work in rows)
    assert rows[("net.encoder.0", "forward")]["sides"] == "32x32 -> 16x16"
    assert rows[("net.decoder.0", "forward")]["convolution"].endswith("transposed, stride 2")
    assert rows[("net.decoder.0", "forward")]["sides"] == "8x8 -> 16x16"  # a transposed convolution's own arithmetic
    assert rows[("net.decoder.3", "backward: input and weight")]["sides"] == "16x16 -> 32x32"
    assert all(row["ms"] > 0 and row["tflops"] > 0 for row in table)
    assert [row["ms"] for row in table] == sorted((row["ms"] for row in table), reverse=True)
    lines = bench.conv_lines(table, peak=None)
    assert len(lines) == 3 + len(table) + 1 and lines[0].startswith("Convolutions by layer")
    assert all(line.endswith("| - | - |") for line in lines[3:-1])  # no floor without the card's figures
    # the least traffic, in elements of 2 bytes: x (2, 3, 32, 32) and w (8, 3, 4, 4) read, y (2, 8, 16, 16) written
    assert rows[("net.encoder.0", "forward")]["gb"] * 1e9 == pytest.approx(2 * (2 * 3 * 32**2 + 8 * 3 * 4**2
                                                                               + 2 * 8 * 16**2), rel=1e-12)
    # its weight gradient: the output's gradient and x read, the weight gradient written
    assert rows[("net.encoder.0", "backward: weight")]["gb"] == rows[("net.encoder.0", "forward")]["gb"]
    # VGG conv1_2's input gradient (64 -> 64 channels at 32x32): the output's gradient and w read, the input's written
    assert rows[("reconstruction.vgg.2", "backward: input")]["gb"] * 1e9 == pytest.approx(
        2 * (2 * 2 * 64 * 32**2 + 64 * 64 * 9), rel=1e-12)


def test_each_convolution_is_set_against_its_floor_at_the_cards_peak_or_bandwidth():
    bench = load_benchmark("bench_vae")
    row = {"layer": "x", "convolution": "c", "sides": "s", "work": "forward", "calls": 1.0, "ms": 2.0,
           "tflops": 1.0, "gflop": 100.0, "gb": 2.0}
    # 100 GFLOP at 1,000 TFLOP/s is 0.1 ms; 2 GB at 2 TB/s is 1 ms: bound by memory, at half its floor's speed
    assert bench.conv_floor(row, peak=1000.0, tbps=2.0) == (1.0, "memory")
    assert bench.conv_floor({**row, "gflop": 4000.0}, peak=1000.0, tbps=2.0) == (4.0, "arithmetic")
    assert bench.conv_floor(row, peak=None, tbps=2.0) is None
    lines = bench.conv_lines([row], peak=1000.0, tbps=2.0)
    assert lines[3].endswith("| 2.000 | 1.000 (memory) | 50% |") and "at least 1.00 ms" in lines[0]


def test_the_memory_floor_counts_every_batch_normed_map_and_parameter():
    bench = load_benchmark("bench_vae")
    model = VAE(SMALL)
    seen = []  # the maps the model's batch norms really normalise, per image
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(lambda m, given, out: seen.append(out[0].numel()))
    model(torch.rand(1, 3, 32, 32))
    # 32 -> 16 -> 8 down (8 and 16 channels), then 8 -> 16 -> 32 up (16 and 8 channels)
    assert bench.batch_norm_maps(model) == seen == [8 * 16**2, 16 * 8**2, 16 * 16**2, 8 * 32**2]
    floor = bench.memory_floor(model, batch=4)
    assert floor[bench.BATCH_NORM] == 8 * sum(seen) * 4 * 2  # 8 passes over bf16 maps
    assert floor[bench.ADAM] == 28 * sum(p.numel() for p in model.parameters())
    # heads 1024 -> 4 (two), decoder input 4 -> 1024: weights and activations, three times each, fp32
    assert floor[bench.MATMUL] == 12 * 3 * (1024 * 4 + 4 * (1024 + 4))
    lines = bench.floor_lines({bench.BATCH_NORM: 2.0}, {bench.BATCH_NORM: 3.35e9, bench.ADAM: 1e9}, tbps=3.35)
    assert "| 2.00 | 3.35 | 1.00 | 50% |" in lines[3] and lines[4].endswith("| - |")  # Adam not measured


def test_kernels_are_classed_by_what_they_compute():
    bench = load_benchmark("bench_vae")
    assert bench.kernel_class("void cudnn::bn_fw_tr_1C11_singleread_fp16<512, 1, 2, 20>") == bench.BATCH_NORM
    assert bench.kernel_class("triton_red_fused__native_batch_norm_legit_functional_leaky_relu_0") == bench.BATCH_NORM
    assert bench.kernel_class("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == \
        "convolutions (cuDNN)"
    assert bench.kernel_class("void at::native::fused_adam_kernel") == bench.ADAM
    assert bench.kernel_class("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32") == bench.MATMUL


def test_the_profile_classes_vae_tritonconvs_kernels_by_their_names():
    """--image-conv triton: the profile's class of our own kernels, set against the cuDNN layers' 4.2 ms; their
    names must follow vae.tritonconv's kernels (a renamed kernel would fall into "other")."""
    pytest.importorskip("triton", reason="Triton is not installed here")
    from triton.runtime.jit import JITFunction

    from vae import tritonconv

    bench = load_benchmark("bench_vae")
    kernels = {name for name, value in vars(tritonconv).items()
               if isinstance(value, JITFunction) and name.endswith("_kernel")}
    assert kernels == set(bench.TRITONCONV_KERNELS)
    assert {bench.kernel_class(name) for name in kernels} == {"image convolutions (vae.tritonconv's Triton kernels)"}

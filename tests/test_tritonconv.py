"""vae.tritonconv, the kernels of --image-conv triton, run on the CPU by Triton's interpreter and checked against
torch's convolutions in float64: the forward pass, the input, weight and bias gradients, both memory formats,
fp32 and bf16, eagerly and inside graphs torch.compile (Inductor) makes.

Triton reads TRITON_INTERPRET when the kernels are defined, so each check runs in a process of its own with it
set, and hands its measurements back as JSON; the assertions are here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vae.imageconv import ImageConv2d, image_conv_line, use_image_conv
from vae.model import VAE, ModelConfig

REPO = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton", reason="Triton is not installed here (torch's CUDA wheels for Linux bring it)")

# (in, out, kernel, padding, bias, relu): the paper's three layers (VGG conv1_1 with the ReLU it fuses, encoder.0,
# the output layer), then shapes that exercise the edges: a kernel of 5 with 3 inputs, more inputs than one block
# of channels and no padding (with a ReLU, in the other kernel)
SHAPES = [(3, 64, 3, 1, True, True), (3, 64, 4, 1, True, False), (64, 3, 3, 1, True, False),
          (3, 20, 5, 2, False, False), (70, 3, 3, 0, True, True)]


def interpreted(code: str, device: str = "cpu") -> object:
    """Runs `code` in a Python process of its own, on the CPU under Triton's interpreter, or on a CUDA GPU (where
    there is one) compiled, with DEVICE set to `device`; returns what its last line printed, read as JSON."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the kernels are checked on the CPU, by Triton's interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    code = f"DEVICE = {device!r}\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_kernels_compute_the_convolution_and_its_gradients(device):
    errors = interpreted(f"""
        import json, torch, torch.nn.functional as F
        from vae import tritonconv

        torch.backends.cudnn.allow_tf32 = False  # on a GPU, fp32 products exact (not TF32), to compare with float64

        def relative(ours, reference):
            return ((ours.cpu().double() - reference).abs().max() / reference.abs().max()).item()

        results = []
        # every dtype and memory format in the block of a GPU run; the trainer's bf16 channels_last maps in the
        # interpreter's own block, and with the 64-bit indices of maps of 2^31 elements or more
        narrow = tritonconv._wide
        variants = [(128, d, c, False) for d in (torch.float32, torch.bfloat16) for c in (False, True)]
        extra = [(1024, torch.bfloat16, True, False), (1024, torch.bfloat16, True, True)] if DEVICE == "cpu" else []
        for block, dtype, channels_last, wide in variants + extra:
            tritonconv.BLOCK_PIXELS = block
            tritonconv._wide = (lambda *maps: True) if wide else narrow
            for in_c, out_c, k, padding, bias, relu in {SHAPES}:
                torch.manual_seed(0)
                x = torch.randn(2, in_c, 13, 11).to(dtype)  # not square; 2.2 blocks of 128 pixels
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                w = (torch.randn(out_c, in_c, k, k) / (in_c * k * k) ** 0.5).to(dtype)
                b = torch.randn(out_c).to(dtype) if bias else None
                ours = [t.clone().to(DEVICE).requires_grad_() if t is not None else None for t in (x, w, b)]
                y = tritonconv.image_conv(*ours, padding, relu)
                g = torch.randn(y.shape).to(dtype)
                y.backward(g.to(DEVICE).contiguous(memory_format=torch.channels_last if channels_last else
                                                   torch.contiguous_format))
                ref = [t.double().requires_grad_() if t is not None else None for t in (x, w, b)]
                y_ref = F.conv2d(*ref, padding=padding)
                if relu:
                    y_ref = F.relu(y_ref)
                y_ref.backward(g.double())
                results.append(dict(
                    case=[in_c, out_c, k, padding, bias, str(dtype), channels_last, block, wide, relu],
                    zeros=(y == 0).float().mean().item(),
                    shape=list(y.shape) == list(y_ref.shape), dtype=y.dtype == dtype,
                    layout=y.is_contiguous(memory_format=torch.channels_last),  # the trainer's layout, always
                    errors=[relative(o, r) for o, r in zip(
                        [y] + [t.grad for t in ours if t is not None],
                        [y_ref] + [t.grad for t in ref if t is not None])]))
        print(json.dumps(results))
    """, device)
    assert len(errors) == (6 if device == "cpu" else 4) * len(SHAPES)
    for result in errors:
        assert result["shape"] and result["dtype"] and result["layout"], result
        # fp32: rounding of sums of up to 630 products; bf16: the output's own rounding, 2^-8 of its largest value
        tolerance = 1e-5 if result["case"][5] == "torch.float32" else 1.2e-2
        assert max(result["errors"]) < tolerance, result
        assert len(result["errors"]) == 3 + result["case"][4]  # y and the gradients of x, w and (if any) b
        assert (result["zeros"] > 0.3) == result["case"][9], result  # the ReLU zeroes about half, and only it


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_weight_gradients_summed_over_many_blocks_per_program_and_the_same_in_every_run(device):
    """The weight gradient sums over every pixel: each program takes a chunk of blocks, and torch adds the chunks'
    partial sums in a fixed order. With few programs, each loops over many blocks; the sum is the same to the
    last bit in every run (no atomic additions, whose order would vary)."""
    result = interpreted("""
        import json, torch, torch.nn.functional as F
        from vae import tritonconv

        torch.backends.cudnn.allow_tf32 = False  # on a GPU, fp32 products exact (not TF32), to compare with float64

        tritonconv.BLOCK_PIXELS, tritonconv.WEIGHT_GRAD_CHUNKS = 128, 3
        torch.manual_seed(0)
        x = torch.randn(3, 64, 30, 31).contiguous(memory_format=torch.channels_last)
        g = torch.randn(3, 3, 30, 31).contiguous(memory_format=torch.channels_last)
        runs = [[t.cpu() for t in tritonconv.image_conv_weight_grad(g.to(DEVICE), x.to(DEVICE), 3, 1)]
                for _ in range(2)]
        w = torch.zeros(3, 64, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        F.conv2d(x.double(), w, b, padding=1).backward(g.double())
        print(json.dumps(dict(
            weight=((runs[0][0].double() - w.grad).abs().max() / w.grad.abs().max()).item(),
            bias=((runs[0][1].double() - b.grad).abs().max() / b.grad.abs().max()).item(),
            same=all(torch.equal(a, b) for a, b in zip(runs[0], runs[1])))))
    """, device)
    assert result["weight"] < 1e-5 and result["bias"] < 1e-5 and result["same"], result


def test_the_operators_keep_the_contract_torch_compile_relies_on():
    """torch.library.opcheck on both operators, with and without the ReLU and on both memory formats: the schema
    says what they mutate (nothing), the fake implementations Inductor plans with give the real outputs' shapes,
    strides (channels_last) and dtypes, and the autograd registration is the one AOTAutograd traces. A fake output
    in another layout than the real one would make a compiled graph read the kernel's map wrongly. And the fused
    ReLU gives exactly torch's ReLU of the unfused output."""
    result = interpreted("""
        import json, torch
        from vae import tritonconv

        torch.manual_seed(0)
        found = {}
        for relu in (False, True):
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(2, 3, 9, 8).contiguous(memory_format=layout).requires_grad_()
                w, b = torch.randn(16, 3, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)
                g = torch.randn(2, 16, 9, 8).contiguous(memory_format=layout)
                found[f"image_conv relu={relu} {layout}"] = torch.library.opcheck(tritonconv.image_conv,
                                                                                  (x, w, b, 1, relu))
                found[f"image_conv_weight_grad {layout}"] = torch.library.opcheck(
                    tritonconv.image_conv_weight_grad, (g, x.detach(), 3, 1))
        # the ReLU on the fp32 sums, before rounding, gives what torch's ReLU gives on the rounded output, bit for
        # bit: rounding is monotonic and keeps 0
        exact = []
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(2, 3, 9, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
            w, b = torch.randn(16, 3, 3, 3, dtype=dtype), torch.randn(16, dtype=dtype)
            fused = tritonconv.image_conv(x, w, b, 1, True)
            exact.append(torch.equal(fused, torch.relu(tritonconv.image_conv(x, w, b, 1, False))))
            exact.append(0.2 < (fused == 0).float().mean().item() < 0.8)
        print(json.dumps({"opcheck": found, "exact": exact}))
    """)
    assert result["exact"] == [True] * 4
    result = result["opcheck"]
    assert len(result) == 6
    for case, tests in result.items():
        assert tests == {"test_schema": "SUCCESS", "test_autograd_registration": "SUCCESS",
                         "test_faketensor": "SUCCESS", "test_aot_dispatch_dynamic": "SUCCESS"}, case


def test_compiled_image_convolutions_run_the_kernels_and_equal_eager_execution():
    """What a compiled CUDA step does with --image-conv triton, on the CPU (PADDED_ON includes it here): the
    paper's three image convolutions, compiled by Inductor with the kernels inside its graph, against the same
    layers run eagerly by torch, in fp32 and under bf16 autocast, forward and backward."""
    result = interpreted("""
        import json, torch
        import torch.nn.functional as F
        from vae import imageconv
        from vae.imageconv import ImageConv2d, use_image_conv

        imageconv.PADDED_ON = ("cpu",)
        torch.manual_seed(0)
        net = torch.nn.Sequential(ImageConv2d(3, 64, 3, 1, 1, relu=True), torch.nn.Conv2d(64, 64, 3, 2, 1),
                                  torch.nn.ReLU(), ImageConv2d(64, 3, 3, 1, 1), torch.nn.Sigmoid(),
                                  ImageConv2d(3, 64, 4, 1, 1)).to(memory_format=torch.channels_last)
        chosen = use_image_conv(net, "triton")
        x = torch.rand(2, 3, 20, 20).contiguous(memory_format=torch.channels_last)
        out = {}
        for amp in (False, True):
            results = []
            for run in (net, torch.compile(net)):
                net.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    y = run(x)
                (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
                results.append([y.float()] + [p.grad.clone() for p in net.parameters()])
            out[str(amp)] = dict(dtype=str(y.dtype), errors=[((c - e).abs().max() / e.abs().max()).item()
                                                              for e, c in zip(*results)])
        torch._dynamo.reset()
        with torch.profiler.profile() as profile:
            torch.compile(net)(x).sum().backward()
        names = {event.name for event in profile.events()}
        # the graphs Inductor gets: the first layer's ReLU inside the kernel, not an operation of its own
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        graphs = []
        def keep(graph, inputs):
            graphs.append([str(node.target) for node in graph.graph.nodes if node.op == "call_function"])
            return make_boxed_func(graph.forward)
        torch._dynamo.reset()
        torch.compile(net, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))(x).sum().backward()
        print(json.dumps(dict(chosen=chosen, runs=out, graphs=graphs,
                              kernels=sorted(n for n in names if n.startswith("subitizing_vae::")))))
    """)
    forward, backward = result["graphs"]
    assert forward.count("aten.relu.default") == 1  # the stride-2 layer's; conv1_1's is in the kernel
    assert forward.count("subitizing_vae.image_conv.default") == 3
    assert backward.count("aten.threshold_backward.default") == 1  # the same one's; the kernel's mask is a where
    assert backward.count("aten.where.self") == 1
    assert result["chosen"] == ["0", "3", "5"]
    assert result["kernels"] == ["subitizing_vae::image_conv", "subitizing_vae::image_conv_weight_grad"]
    assert result["runs"]["False"]["dtype"] == "torch.float32" and result["runs"]["True"]["dtype"] == "torch.bfloat16"
    assert max(result["runs"]["False"]["errors"]) < 1e-4, result
    assert max(result["runs"]["True"]["errors"]) < 5e-2, result  # bf16 products, rounded in other orders


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_check_before_training_passes_the_paper_layers_in_bf16_and_finds_one_tap_missing(device):
    """vae.imageconv.kernel_differences, which the trainer runs on every layer before it compiles the kernels in:
    under bf16 autocast the paper's two layers (VGG conv1_1, the output layer) are within KERNEL_TOLERANCE of torch's
    convolution in every pass, and a weight gradient with one tap of 9 missing is not. On a GPU at the trainer's
    batch 128 and 161x161 against cuDNN; in the interpreter on a small batch against torch's CPU convolution."""
    result = interpreted("""
        import json, torch
        from vae import tritonconv
        from vae.imageconv import ImageConv2d, kernel_differences

        batch, side = (128, 161) if DEVICE == "cuda" else (4, 24)
        summed = tritonconv.summed_weight_grad
        def one_tap_missing(*args):
            weight, bias = summed(*args)
            weight[..., 1, 1] = 0
            return weight, bias
        torch.manual_seed(0)
        found = {}
        for in_c, out_c in ((3, 64), (64, 3)):
            conv = ImageConv2d(in_c, out_c, 3, 1, 1, relu=in_c == 3).to(DEVICE)  # conv1_1 with its ReLU
            x = torch.randn(batch, in_c, side, side, device=DEVICE).contiguous(memory_format=torch.channels_last)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                right = kernel_differences(conv, x)
                tritonconv.summed_weight_grad = one_tap_missing
                wrong = kernel_differences(conv, x)
                tritonconv.summed_weight_grad = summed
            found[f"{in_c}->{out_c}"] = {"right": right, "wrong": wrong}
        print(json.dumps(found))
    """, device)
    from vae.imageconv import KERNEL_TOLERANCE

    for layer in result.values():
        assert sorted(layer["right"]) == ["bias gradient", "input gradient", "output", "weight gradient"]
        assert all(0 <= value < KERNEL_TOLERANCE / 2 for value in layer["right"].values()), result
        assert layer["wrong"]["weight gradient"] > 5 * KERNEL_TOLERANCE, result
        assert layer["wrong"]["output"] == layer["right"]["output"], result


def test_the_check_before_training_runs_only_the_passes_a_training_step_runs():
    """The layer check runs each layer's kernels in the passes the compiled step runs there and no others: the
    first layer's input is the image, which needs no gradient; VGG's conv1_1 is frozen, so it has no weight or bias
    gradient, but the reconstruction's features need its input gradient. A pass nobody runs costs the check a
    kernel to compile and launch, and a failure there would have taken the kernels from every layer."""
    result = interpreted("""
        import json, torch
        from contextlib import nullcontext
        from vae import tritonconv
        from vae.imageconv import checked_kernels, triton_layers
        from vae.losses import Objective, PerceptualLoss
        from vae.model import VAE, ModelConfig
        from vae.vgg import truncated_vgg19

        launched = []
        for name in ("conv_launch", "weight_grad_launch"):
            def counting(*args, made=getattr(tritonconv, name), name=name):
                launched.append(name)
                return made(*args)
            setattr(tritonconv, name, counting)
        torch.manual_seed(0)
        model = VAE(ModelConfig(image_size=16, encoder="8@3x3-1,16@4x4-2", decoder="16@3x3-2", latent=4)).train()
        loss = PerceptualLoss(truncated_vgg19())
        layers = triton_layers("triton", [model, loss])
        x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
        record = checked_kernels(Objective(model, loss, 1.0, 1.0), x, torch.zeros(2, 4), nullcontext, layers)
        print(json.dumps(dict(passes={n: sorted(p) for n, p in record["differences"].items()}, used=record["used"],
                              launched=launched, training=[m.training for m in model.modules()],
                              grads=[p.grad is None for p in model.parameters()])))
    """)
    assert result["passes"] == {"encoder.0": ["bias gradient", "output", "weight gradient"],
                                "output": ["bias gradient", "input gradient", "output", "weight gradient"],
                                "vgg.0": ["input gradient", "output"]}, result
    assert result["used"] and all(result["training"]) and all(result["grads"])
    # the kernels launched: 3 forward passes and 2 input gradients (convolutions too), 2 weight gradients
    assert sorted(result["launched"]) == ["conv_launch"] * 5 + ["weight_grad_launch"] * 2, result


def test_kernels_that_fail_on_the_machine_are_left_out_and_the_log_says_why():
    """Where Triton cannot compile or launch the kernels (here for real: outside the interpreter, on tensors in
    the CPU's memory), the layer check records the error and the run leaves the image convolutions to cuDNN,
    rather than stopping; the check leaves the model's modes as they were."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: the kernels would run")
    from contextlib import nullcontext

    from vae.imageconv import checked_kernels
    from vae.losses import Objective, PixelLoss

    model = VAE(ModelConfig(image_size=16, encoder="8@4x4-2", decoder="8@3x3-2", latent=4)).train()
    x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    record = checked_kernels(Objective(model, PixelLoss(), 1.0, 1.0), x, torch.zeros(2, 4), nullcontext,
                             {"output": model.output})
    assert not record["used"] and record["largest"] is None and record["differences"] == {}
    assert record["error"].startswith("in output: ") and len(record["error"]) > len("in output: ")
    assert all(module.training for module in model.modules())
    line = image_conv_line("triton", [], "cuda", record)
    assert line.startswith(f"--image-conv triton: vae.tritonconv's kernels failed on this machine ({record['error']})"
                           "; cuDNN runs the image convolutions")


def test_only_layers_the_kernels_compute_take_them_and_the_log_says_where_they_run():
    model = VAE(ModelConfig(image_size=32, encoder="16@4x4-2, 32@4x4-2", decoder="32@3x3-2, 16@3x3-2", latent=8))
    assert use_image_conv(model, "triton") == ["output"]  # encoder.0 has stride 2: cuDNN keeps it
    assert model.encoder[0].kernels == "cudnn" and model.output.kernels == "triton"
    assert use_image_conv(model, "cudnn") == [] and model.output.kernels == "cudnn"
    paper = VAE(ModelConfig())
    assert use_image_conv(paper, "triton") == ["encoder.0", "output"]
    from vae.tritonconv import supports

    assert supports(ImageConv2d(3, 64, 5, 1, 2)) and supports(ImageConv2d(64, 3, 3, 1, 0))
    assert not supports(ImageConv2d(3, 64, 3, 1, (1, 2)))  # padding unequal on the two axes
    assert not supports(ImageConv2d(3, 64, 3, 1, 1, dilation=2)) and not supports(ImageConv2d(3, 64, 7, 1, 3))
    with pytest.raises(ValueError, match="--image-conv 'tensorrt'"):
        use_image_conv(paper, "tensorrt")
    assert image_conv_line("cudnn", [], "cuda") == ""
    assert "for compiled CUDA steps only" in image_conv_line("triton", ["output"], "cpu")
    assert image_conv_line("triton", ["encoder.0", "output"], "cuda") == \
        "the image convolutions (encoder.0, output) run vae.tritonconv's Triton kernels"
    assert "cuDNN runs them" in image_conv_line("triton", [], "cuda")
    passed = {"used": True, "tolerance": 0.02, "largest": {"layer": "output", "what": "output", "value": 0.004}}
    assert image_conv_line("triton", ["output"], "cuda", passed) == \
        "the image convolutions (output) run vae.tritonconv's Triton kernels, checked against torch's (within 0.004)"
    failed = {**passed, "used": False, "largest": {"layer": "vgg.0", "what": "input gradient", "value": 0.3}}
    assert image_conv_line("triton", [], "cuda", failed).startswith(
        "--image-conv triton: vae.tritonconv's kernels differ from torch's convolution on this machine, in vgg.0's "
        "input gradient by 0.3 of its norm (tolerance 0.02; every difference is in config.json); cuDNN runs")


def test_the_kernels_multiply_as_cudnn_does_on_a_gpu_and_in_fp32_in_the_interpreter(monkeypatch):
    """The interpreter gets bf16 matrix products wrong (Triton 3.8.0: values off by 1e10), so there the kernels
    multiply in fp32, exact for bf16 inputs. Compiled for a GPU they multiply bf16 maps in bf16, and fp32 maps in
    TF32 exactly where torch lets cuDNN use it, both with fp32 sums."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: the compiled settings are not the ones in force")
    from vae import tritonconv

    assert not tritonconv.INTERPRETED and tritonconv.BLOCK_PIXELS == 128
    assert tritonconv._dot_settings(torch.bfloat16) == {"FP32_DOT": False, "PRECISION": "ieee"}
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert tritonconv._dot_settings(torch.float32) == {"FP32_DOT": True, "PRECISION": "tf32"}
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert tritonconv._dot_settings(torch.float32) == {"FP32_DOT": True, "PRECISION": "ieee"}


def benchmark_that_compiles_for_an_h100():
    """benchmarks/bench_imageconv.py, loaded; skips where this process cannot compile kernels for an H100."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 in this process: the interpreter compiles nothing")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip(f"{ptxas} is absent: this Triton cannot compile for NVIDIA GPUs here")
    from conftest import load_benchmark

    return load_benchmark("bench_imageconv")


def test_compiled_for_an_h100_the_kernels_keep_their_registers_and_move_wide_maps_in_16_byte_accesses():
    """Without a GPU, what Triton's compiler and ptxas make of each pass for an H100 (sm_90), with the arguments
    of the paper's layers at batch 128: registers spilled to local memory, or 64-channel maps moved element by
    element, would keep these memory-bound kernels far from their floor. 128 registers or fewer let an SM hold
    two programs of 8 warps."""
    bench = benchmark_that_compiles_for_an_h100()
    rows = bench.passes(128)
    assert [row["name"] for row in rows] == [
        "encoder.0 forward", "encoder.0 weight gradient", "output forward", "output input gradient",
        "output weight gradient", "vgg.0 forward with its ReLU", "vgg.0 input gradient"]
    for row in rows:
        resources = bench.compiled_resources(row["launch"])
        assert resources["spilled_bytes"] == 0 and resources["registers"] <= 128, (row["name"], resources)
        wide = "stores_16_bytes" if row["launch"].kernel.__name__ == "_few_in_kernel" else "loads_16_bytes"
        assert resources[wide] > 0, (row["name"], resources)


def test_the_benchmark_tunes_each_pass_over_the_settings_it_names_and_marks_those_in_force(monkeypatch):
    """bench_imageconv.py --tune: every pass under every setting tried (the weight-gradient programs only where a
    pass has them), each compiled with that setting (the warps reach the compiler, the programs the launch) and
    the settings in force marked once per pass. Here two settings of the warps and two of the weight-gradient
    programs, compiled for an H100 without timing."""
    from vae import tritonconv

    bench = benchmark_that_compiles_for_an_h100()
    monkeypatch.setattr(bench, "TUNE_SETTINGS", {"BLOCK_PIXELS": (128,), "NUM_WARPS": (4, 8),
                                                 "WEIGHT_GRAD_CHUNKS": (264, 528)})
    found = bench.tuning(128)
    names = [row["name"] for row in bench.passes(128)]
    assert tritonconv.NUM_WARPS == 8 and tritonconv.WEIGHT_GRAD_CHUNKS == 528  # put back after the tuning
    for name in names:
        rows = [r for r in found if r["name"] == name]
        weight = name.endswith("weight gradient")
        assert len(rows) == (4 if weight else 2), name
        assert [(r["NUM_WARPS"], r["WEIGHT_GRAD_CHUNKS"]) for r in rows if r["now"]] == [(8, 528 if weight else None)]
        assert all("ms" not in r and r["spilled_bytes"] == 0 for r in rows)
        if weight:  # a program for each tap (3x3 or 4x4) and chunk; chunks of whole blocks, so a few fewer
            taps = 16 if name.startswith("encoder") else 9
            for r in rows:
                chunks, left = divmod(r["programs"], taps)
                assert left == 0 and 0.97 * r["WEIGHT_GRAD_CHUNKS"] <= chunks <= r["WEIGHT_GRAD_CHUNKS"], r
        else:
            four, eight = (next(r for r in rows if r["NUM_WARPS"] == w) for w in (4, 8))
            assert four["registers"] > eight["registers"] and four["programs"] == eight["programs"], rows


def test_the_tuning_summary_names_each_pass_s_fastest_setting_against_the_one_in_force(capsys):
    from conftest import load_benchmark

    bench = load_benchmark("bench_imageconv")
    common = dict(programs=100, registers=64, spilled_bytes=0, difference=0.004)
    bench.print_tuning([
        dict(name="vgg.0 input gradient", BLOCK_PIXELS=128, NUM_WARPS=8, WEIGHT_GRAD_CHUNKS=None, now=True, ms=0.30,
             **common),
        dict(name="vgg.0 input gradient", BLOCK_PIXELS=64, NUM_WARPS=4, WEIGHT_GRAD_CHUNKS=None, now=False, ms=0.20,
             **common),
        dict(name="output weight gradient", BLOCK_PIXELS=256, NUM_WARPS=8, WEIGHT_GRAD_CHUNKS=264, now=False,
             ms=0.25, **common)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| output weight gradient | 256 | 8 | 264 | 100 | 64 | 0 | 0.250 | 0.004 | |"
    assert lines[3] == "| vgg.0 input gradient | 64 | 4 | - | 100 | 64 | 0 | 0.200 | 0.004 | |"  # fastest first
    assert lines[-2:] == [
        "* vgg.0 input gradient: 0.200 ms at 64 pixels, 4 warps; 0.300 ms in force (1.50x)",
        "* output weight gradient: 0.250 ms at 256 pixels, 8 warps, 264 programs a tap; the settings in force are "
        "not among those tried"]


def test_every_setting_the_tuning_tries_computes_each_pass_on_a_gpu():
    """Before a faster setting found by --tune goes into vae/tritonconv.py: each pass at each setting, compiled and
    run on the GPU, against cuDNN (bf16, small maps)."""
    found = interpreted("""
        import importlib.util, json, torch

        spec = importlib.util.spec_from_file_location("bench", "benchmarks/bench_imageconv.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        torch.manual_seed(0)
        print(json.dumps([[r["name"], r["ms"], r["difference"]] for r in bench.tuning(2, DEVICE, repeats=1, side=21)]))
    """, "cuda")
    assert len(found) == 5 * 6 + 2 * 18
    for name, ms, difference in found:
        assert ms > 0 and difference < 1.2e-2, (name, ms, difference)  # bf16: the outputs' own rounding


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_benchmark_checks_each_pass_of_the_paper_layers_against_torch(device):
    """benchmarks/bench_imageconv.py --device cuda times each pass with our kernel and with torch's convolution and
    reports their largest difference: its passes must be the ones the step runs, with the same arguments (here on
    small maps, fp32)."""
    differences = interpreted("""
        import importlib.util, json, torch

        torch.backends.cudnn.allow_tf32 = False
        spec = importlib.util.spec_from_file_location("bench", "benchmarks/bench_imageconv.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        torch.manual_seed(0)
        rows = bench.passes(2, side=21, device=DEVICE, dtype=torch.float32)
        print(json.dumps({row["name"]: bench.largest_difference(row) for row in rows}))
    """, device)
    assert len(differences) == 7 and max(differences.values()) < 1e-5, differences

"""Where and how a run executes: devices and processes, bf16 autocast, and torch.compile with its check.

One process per GPU under `torchrun` (DistributedDataParallel, NCCL), one process on a CPU or a single
GPU otherwise (gloo for several CPU processes, as the tests run it). None of this changes what a run
computes beyond rounding, which is why the runtime settings may change on --resume.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from common import streams
from common.cli import resolve_device
from common.errors import UsageError, exception_line
from vae.augment import Params, apply
from vae.config import RuntimeSettings

# Mean absolute difference of outputs in [0, 1] between compiled and eager: bf16 rounding gives about
# 0.0015, the torch 2.14.1 CPU miscompilation about 0.07 (the batch-norm statistics after a LeakyReLU, in
# layers whose channels do not fill the CPU's vectors: benchmarks/RESULTS.md).
COMPILE_TOLERANCE = 0.01
# The loss, relative to the eager loss: bf16 rounding gives 1.3e-4 (the paper's model on 16 real scenes, CPU
# autocast, at 64x64 and 161x161); a loss network computed wrongly while the reconstructions are right shows here.
LOSS_TOLERANCE = 0.01
# A parameter's gradient, relative to its norm. Two bf16 executions of the same step (eager and compiled, as above)
# differ by up to 0.20 in some parameter (0.11-0.13 in the weights), and fp32 against bf16 by up to 0.23, so this
# finds gross errors of a backward pass only. In a 3-channel layer's weight gradient: taps flipped give 0.58-1.13,
# a sign or a factor of 2 wrong 1 or more, NaN or garbage fail; transposed taps give 0.48-0.87, the colour channels
# swapped 0.24-0.55 and one tap missing 0.26-0.35, which the tests of the kernels must find instead.
GRADIENT_TOLERANCE = 0.5
GRADIENT_FLOOR = 1e-4  # of the largest gradient's norm: what an all-but-zero gradient is measured against
# Largest absolute difference of augmented images in [0, 1] between compiled and eager: Inductor's bilinear
# sampling and sums round otherwise than ATen's (2-3e-5 measured); a quarter of one uint8 level.
AUGMENT_TOLERANCE = 1e-3


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world: int
    amp: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """bf16 autocast when amp is on, else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        """Sum (or `op`) over processes, in place; the tensor itself with one process."""
        if self.world > 1:
            held = tensor._use_count()
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
            if tensor.device.type == "cpu":
                released_by_gloo(tensor, held)
        return tensor

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def released_by_gloo(tensor: torch.Tensor, held: int) -> None:
    """Wait until gloo's worker thread has let go of a reduced tensor (its count of references back to `held`).
    all_reduce returns once the sum is in, and the worker drops its reference just after: in about a quarter of
    the calls, later (measured on 2 cores). Were the tensor's Python object freed first, the worker would need the
    interpreter's lock to free it; at the end of a run that was during Python's shutdown, when CPython ends such
    a thread, which in C++ aborts the process ("terminate called without an active exception", after "done:",
    in about 1 CPU DDP run in 15). The process group itself outlives destroy_process_group: DDP's reducer holds
    it, so its threads live to the end. At most a second: a worker that kept it longer is not waited for."""
    deadline = time.monotonic() + 1.0
    while tensor._use_count() > held and time.monotonic() < deadline:
        time.sleep(0)


def use_cuda_settings() -> None:
    """What every CUDA run uses: cuDNN's autotuning (fixed shapes) and TF32 for fp32 matrix products and
    convolutions (the few that bf16 autocast leaves in fp32)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def setup_runtime(settings: RuntimeSettings) -> Runtime:
    """Devices and processes: one process per GPU under torchrun, else a single process."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    chosen = resolve_device(settings.device)
    if distributed and chosen.index is not None:
        raise UsageError(f"--device {settings.device}: under torchrun every process uses the GPU of its LOCAL_RANK; "
                         "give --device cuda (or auto)")
    use_cuda = chosen.type == "cuda"
    if distributed and settings.sync_bn and not use_cuda:
        # Refused before the process group forms: a process leaving while the others still connect to it would
        # give them a connection error instead of this message.
        raise UsageError(f"--sync-bn: torch synchronises BatchNorm across processes on CUDA GPUs only, and these "
                         f"{os.environ['WORLD_SIZE']} processes train on {chosen.type}; leave it out (each process "
                         "then normalises by its own batch)")
    rank, world, local = 0, 1, chosen.index or 0
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        use_cuda_settings()
    else:
        device = torch.device("cpu")
    amp = settings.amp == "bf16" or (settings.amp == "auto" and use_cuda)
    return Runtime(device, rank, world, amp)


def step_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one step's random draws (augmentation, then the reparameterisation noise)."""
    return torch.Generator(device=device).manual_seed(streams.seed64(seed, streams.STEP, epoch, step, rank))


def gradients(module: torch.nn.Module, copied: bool = False) -> dict[str, torch.Tensor | None]:
    """The gradients `module`'s trainable parameters hold now, by name (None where a parameter has none); copies
    of them if `copied`, which the next backward pass leaves alone."""
    return {name: None if p.grad is None else p.grad.detach().clone() if copied else p.grad.detach()
            for name, p in module.named_parameters() if p.requires_grad}


def gradient_difference(eager: dict, compiled: dict) -> tuple[float, str | None]:
    """The largest difference between two sets of gradients (gradients()), parameter by parameter, relative to
    the eager gradient's norm, and the parameter it is in. A gradient all but zero (under GRADIENT_FLOOR of the
    largest one's norm) is measured against that floor, not against its own rounding; a gradient that only one
    side has differs infinitely."""
    norms = {name: g.float().norm().item() for name, g in eager.items() if g is not None}
    floor = GRADIENT_FLOOR * max(norms.values(), default=0.0)
    worst, where = 0.0, None
    for name, e in eager.items():
        c = compiled[name]
        if e is None and c is None:
            continue
        if e is None or c is None:
            return math.inf, name
        difference = (c.float() - e.float()).norm().item()
        scale = max(norms[name], floor)
        relative = difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)
        if not relative <= worst:  # NaN too: a non-finite gradient is the worst there is
            worst, where = relative, name
    return worst, where


def compiled_differences(eager, compiled, model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor,
                         runtime: Runtime) -> dict:
    """How far `compiled` is from `eager` (the same objective, vae.losses.Objective) on a batch, in train mode:
    the reconstructions (mean and largest absolute difference), the loss (relative to the eager loss) and the
    gradient of `model`'s parameters (gradient_difference), each from one forward and backward pass, so that the
    graphs checked are the training step's. `model`'s state (BatchNorm statistics, which train-mode forwards
    move) is restored afterwards, and its gradients are cleared, so the first training step starts as it would
    have without the check."""
    saved = copy.deepcopy(model.state_dict())
    model.train()
    results = []
    try:
        for objective in (eager, compiled):
            model.zero_grad(set_to_none=True)
            with runtime.autocast():
                terms = objective(x, noise)
            terms["loss"].backward()
            results.append((terms["x_hat"].detach().float(), terms["loss"].detach().float()))
            del terms
            if len(results) == 1:  # one copy of the eager gradients (the paper's model: 0.75 GB), not two
                grad_eager = gradients(model, copied=True)
        largest, parameter = gradient_difference(grad_eager, gradients(model))
    finally:  # also when compiling fails: the run then trains eagerly from the state it had
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
    (x_eager, loss_eager), (x_compiled, loss_compiled) = results
    pixels = (x_eager - x_compiled).abs()
    return {"mean_difference": pixels.mean().item(), "max_difference": pixels.max().item(),
            "loss_difference": ((loss_compiled - loss_eager).abs() / loss_eager.abs().clamp_min(1e-12)).item(),
            "gradient_difference": largest, "gradient_parameter": parameter}


class _DropProfilerNotice(logging.Filter):
    """Drops dynamo's notice that it ignores DDP's profiler annotation (record_function in DDP's forward): it
    comes with every compiled DDP run, says nothing about the run, and reads like a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Profiler record function")


_CONTEXT_LOG = logging.getLogger("torch._dynamo.variables.ctx_manager")


def compile_augmentation_checked(images: torch.Tensor, params: Params, size: int | None
                                 ) -> tuple[Callable | None, dict]:
    """torch.compile the augmentation (vae.augment.apply: a few fused kernels where eager execution makes some
    twenty passes over the batch), kept only if it gives what eager execution gives for uint8 `images` with
    `params`. Returns the compiled function (None when it differs, or fails to compile) and its record."""
    import torch._dynamo  # here, not at the top: an input refused before training starts is answered 0.8 s sooner

    compiled = torch.compile(apply, dynamic=False)
    record = {"used": False, "max_difference": None, "tolerance": AUGMENT_TOLERANCE, "error": None}
    try:
        largest = (compiled(images, params, size) - apply(images, params, size)).abs().max().item()
    except torch._dynamo.exc.TorchDynamoException as error:
        return None, {**record, "error": exception_line(error)}
    used = largest <= AUGMENT_TOLERANCE
    return (compiled if used else None), {**record, "used": used, "max_difference": largest}


def augmentation_line(record: dict) -> str:
    """What became of compiling the augmentation, for the log."""
    if record["used"]:
        return f"the augmentation compiled too (largest difference from eager {record['max_difference']:.2g})"
    why = record["error"] or (f"it differs from eager execution by up to {record['max_difference']:.3g}, over the "
                              f"tolerance {record['tolerance']}")
    return f"the augmentation runs eagerly: {why}"


def compile_line(why: str, check: dict) -> str:
    """What became of compiling the training step (`check`: the record of compile_checked, with the augmentation's
    and the seconds taken), for the log."""
    if check["error"]:
        return (f"{why}: torch.compile failed on this machine ({check['error']}); training without compiling. "
                "Compiling needs a working C++ compiler for CPU code, and Triton for CUDA; eagerly the run is the "
                "same, only slower (--compile no skips the attempt)")
    if not check["used"]:
        culprit = (f"vae.tritonconv's kernels (--image-conv triton, in {', '.join(triton)}) or a torch.compile "
                   f"correctness bug in torch {torch.__version__}: --image-conv cudnn tells them apart"
                   if (triton := check.get("image_conv", {}).get("triton_layers"))
                   else f"a torch.compile correctness bug in torch {torch.__version__}")
        return (f"{why}: the compiled objective differs from eager execution on a training batch, in "
                f"{'; in '.join(check_failures(check))}: {culprit}; training without compiling")
    return (f"compiled and checked in {check['seconds']:.0f} s (against eager execution: reconstructions "
            f"{check['mean_difference']:.2g} apart on average, the loss {check['loss_difference']:.2g}, gradients "
            f"{check['gradient_difference']:.2g} at most); {augmentation_line(check['augmentation'])}")


def compile_decision(setting: str, mode: str, device: torch.device) -> tuple[bool, str]:
    """Whether a run compiles its training step under --compile `setting` (yes, no, auto) and --compile-mode `mode` on
    `device`, and why, in words. auto compiles on CUDA, where the compiled step of the paper's model ran 1.5x
    faster on an H100 (2,825 images/s against 1,826 at batch 64) for some seconds of compiling; not on the CPU,
    where it ran slower (0.66 images/s against 0.80 on 2 cores) and Inductor's CPU code has miscompiled
    BatchNorm blocks (benchmarks/RESULTS.md). A --compile-mode other than default asks for compiling."""
    if setting != "auto":
        return setting == "yes", f"--compile {setting}"
    if mode != "default":
        return True, f"--compile auto with --compile-mode {mode}"
    if device.type == "cuda":
        return True, "--compile auto on CUDA"
    return False, f"--compile auto: compiled on CUDA only, and this run is on {device.type}"


def compile_objective(objective: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """torch.compile in one of COMPILE_MODES, for static shapes: the trainer feeds the compiled objective
    full batches only (vae.train.Run.step)."""
    if not any(isinstance(f, _DropProfilerNotice) for f in _CONTEXT_LOG.filters):
        _CONTEXT_LOG.addFilter(_DropProfilerNotice())
    return torch.compile(objective, mode=None if mode == "default" else mode, dynamic=False)


def compile_checked(objective: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor,
                    runtime: Runtime, mode: str = "default") -> tuple[torch.nn.Module | None, dict]:
    """torch.compile the whole training objective (model, reconstruction loss, loss arithmetic), and keep
    it only if it computes what eager execution computes, forward and backward (compiled_differences, within
    COMPILE_TOLERANCE, LOSS_TOLERANCE and GRADIENT_TOLERANCE): Inductor has had silent correctness bugs around
    BatchNorm (torch 2.14.1 on CPU gets conv -> LeakyReLU -> BatchNorm wrong for some shapes), and
    --image-conv triton puts kernels of our own into both passes. Returns the compiled objective (None when it
    differs, or when torch.compile fails on this machine) and the check's record for config.json."""
    import torch._dynamo  # here, not at the top: an input refused before training starts is answered 0.8 s sooner

    compiled = compile_objective(objective, mode)
    record = {"used": False, "what": "model, loss and loss arithmetic", "mode": mode,
              "mean_difference": None, "max_difference": None, "tolerance": COMPILE_TOLERANCE,
              "loss_difference": None, "loss_tolerance": LOSS_TOLERANCE,
              "gradient_difference": None, "gradient_parameter": None, "gradient_tolerance": GRADIENT_TOLERANCE,
              "error": None}
    try:
        differences = compiled_differences(objective, compiled, model, x, noise, runtime)
    except torch._dynamo.exc.TorchDynamoException as error:
        # torch.compile failing on this machine (no C++ compiler for Inductor's CPU code, no working Triton):
        # eager execution ran first in the check, so the objective itself is sound
        return None, {**record, "error": exception_line(error)}
    record.update(differences)
    record["used"] = not check_failures(record)
    return (compiled if record["used"] else None), record


def check_failures(check: dict) -> list[str]:
    """What the compiled objective got wrong, in words, by the record of compile_checked: empty when it passed."""
    failures = []
    if not check["mean_difference"] <= check["tolerance"]:
        failures.append(f"its reconstructions by {check['mean_difference']:.3g} on average (tolerance "
                        f"{check['tolerance']})")
    if not check["loss_difference"] <= check["loss_tolerance"]:
        failures.append(f"its loss by {check['loss_difference']:.3g} of the loss (tolerance {check['loss_tolerance']})")
    if not check["gradient_difference"] <= check["gradient_tolerance"]:
        failures.append(f"the gradient of {check['gradient_parameter']} by {check['gradient_difference']:.3g} of its "
                        f"norm (tolerance {check['gradient_tolerance']})")
    return failures

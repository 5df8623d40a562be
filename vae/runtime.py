"""Where and how a run executes: devices and processes, bf16 autocast, and torch.compile with its check.

One process per GPU under `torchrun` (DistributedDataParallel, NCCL), one process on a CPU or a single
GPU otherwise (gloo for several CPU processes, as the tests run it). None of this changes what a run
computes beyond rounding, which is why the runtime settings may change on --resume.
"""
from __future__ import annotations

import copy
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch._dynamo
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
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


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


def compiled_difference(eager, compiled, modules: list[torch.nn.Module], x: torch.Tensor, noise: torch.Tensor,
                        runtime: Runtime) -> tuple[float, float]:
    """Mean and largest absolute difference of the reconstructions `compiled` and `eager` (the same
    objective, vae.losses.Objective) give for a batch, in train mode with autograd on, so that the
    training graph is the one compiled. The `modules`' states, which train-mode forwards move (BatchNorm
    statistics), are restored afterwards."""
    saved = [copy.deepcopy(module.state_dict()) for module in modules]
    for module in modules:
        module.train()
    try:
        with runtime.autocast():
            difference = (eager(x, noise)["x_hat"].detach().float()
                          - compiled(x, noise)["x_hat"].detach().float()).abs()
    finally:  # also when compiling fails: the run then trains eagerly from the state it had
        for module, state in zip(modules, saved):
            module.load_state_dict(state)
    return difference.mean().item(), difference.max().item()


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
        return (f"{why}: the compiled objective differs from eager execution by {check['mean_difference']:.3g} on "
                f"average on a training batch (tolerance {check['tolerance']}), {culprit}; training without "
                "compiling")
    return (f"compiled and checked in {check['seconds']:.0f} s (mean difference from eager execution "
            f"{check['mean_difference']:.2g}); {augmentation_line(check['augmentation'])}")


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
    it only if it computes what eager execution computes: Inductor has had silent correctness bugs around
    BatchNorm (torch 2.14.1 on CPU gets conv -> LeakyReLU -> BatchNorm wrong for some shapes). Returns the
    compiled objective (None when it differs, or when torch.compile fails on this machine) and the check's
    record for config.json."""
    compiled = compile_objective(objective, mode)
    record = {"used": False, "what": "model, loss and loss arithmetic", "mode": mode,
              "mean_difference": None, "max_difference": None, "tolerance": COMPILE_TOLERANCE, "error": None}
    try:
        mean, largest = compiled_difference(objective, compiled, [model], x, noise, runtime)
    except torch._dynamo.exc.TorchDynamoException as error:
        # torch.compile failing on this machine (no C++ compiler for Inductor's CPU code, no working Triton):
        # eager execution ran first in the check, so the objective itself is sound
        return None, {**record, "error": exception_line(error)}
    used = mean <= COMPILE_TOLERANCE
    return (compiled if used else None), {**record, "used": used, "mean_difference": mean, "max_difference": largest}

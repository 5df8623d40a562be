"""Layer specifications in the paper's notation: `N@KxK-S` is N filters of size KxK with stride S."""
from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import UsageError

PAPER_ENCODER = "64@4x4-1, 64@4x4-2, 128@4x4-2, 768@4x4-2"
PAPER_DECODER = "768@3x3-1, 768@3x3-2, 256@3x3-2, 64@3x3-2"


class SpecError(UsageError, ValueError):
    """A layer string that does not follow the N@KxK-S notation."""


MAX_WIDTH = 65536  # channels, latent or hidden units: far beyond any model of this kind; numbers past int64
# otherwise reach torch as a crash
MAX_KERNEL = 64


@dataclass(frozen=True)
class LayerSpec:
    channels: int
    kernel: int
    stride: int

    @property
    def padding(self) -> int:
        """(K - 1) // 2 on each side: the grid keeps its size at stride 1 for odd K, and a stride-2
        layer with K = 4 halves an even grid exactly."""
        return (self.kernel - 1) // 2

    def __str__(self) -> str:
        return f"{self.channels}@{self.kernel}x{self.kernel}-{self.stride}"


def _parse(text: str) -> tuple[tuple[LayerSpec, ...], str | None]:
    """The layers of a spec string, or what is wrong with it."""
    layers = []
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)\s*@\s*(\d+)\s*x\s*(\d+)\s*-\s*(\d+)", part)
        if not match:
            return (), f"{part!r} is not in the N@KxK-S notation (e.g. 64@4x4-2)"
        channels, kh, kw, stride = map(int, match.groups())
        if kh != kw:
            return (), f"{part!r} has a non-square kernel; only KxK kernels are supported"
        if channels < 1 or kh < 1 or stride < 1:
            return (), f"{part!r} needs at least 1 channel, kernel 1 and stride 1"
        if channels > MAX_WIDTH or kh > MAX_KERNEL or stride > MAX_KERNEL:
            return (), (f"{part!r} is beyond any model this trainer is for: at most {MAX_WIDTH} channels, and "
                        f"kernels and strides of at most {MAX_KERNEL}")
        layers.append(LayerSpec(channels, kh, stride))
    return tuple(layers), None


def layers_problem(text: str) -> str | None:
    """What is wrong with a layer string (None when it parses)."""
    return _parse(text)[1]


def parse_layers(text: str, option: str) -> tuple[LayerSpec, ...]:
    """Parse '64@4x4-1, 64@4x4-2, ...' into layer specs; errors name the option."""
    layers, problem = _parse(text)
    if problem:
        raise SpecError(f"{option} {text!r}: {problem}")
    return layers


def format_layers(layers) -> str:
    return ", ".join(str(layer) for layer in layers)

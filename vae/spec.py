"""Layer specifications in the paper's notation: `N@KxK-S` is N filters of size KxK with stride S."""
from __future__ import annotations

import re
from dataclasses import dataclass


class SpecError(ValueError):
    """A layer string that does not follow the N@KxK-S notation."""


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


def parse_layers(text: str, option: str) -> tuple[LayerSpec, ...]:
    """Parse '64@4x4-1, 64@4x4-2, ...' into layer specs; errors name the option."""
    layers = []
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)\s*@\s*(\d+)\s*x\s*(\d+)\s*-\s*(\d+)", part)
        if not match:
            raise SpecError(f"{option} {text!r}: {part!r} is not in the N@KxK-S notation (e.g. 64@4x4-2)")
        channels, kh, kw, stride = map(int, match.groups())
        if kh != kw:
            raise SpecError(f"{option} {text!r}: {part!r} has a non-square kernel; only KxK kernels are supported")
        if channels < 1 or kh < 1 or stride < 1:
            raise SpecError(f"{option} {text!r}: {part!r} needs at least 1 channel, kernel 1 and stride 1")
        layers.append(LayerSpec(channels, kh, stride))
    if not layers:
        raise SpecError(f"{option}: no layers given")
    return tuple(layers)


def format_layers(layers) -> str:
    return ", ".join(str(layer) for layer in layers)

"""The paper's convolutional VAE (Wever & Runia, section 4.2), with its open details made explicit."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vae.imageconv import ImageConv2d
from vae.spec import PAPER_DECODER, PAPER_ENCODER, LayerSpec, SpecError, format_layers, parse_layers
SIGMA_FLOOR = 1e-5  # keeps log(sigma) in the KL finite


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved in every checkpoint."""

    image_size: int = 161
    encoder: str = PAPER_ENCODER
    decoder: str = PAPER_DECODER
    output_layer: str = "3@3x3-1"
    latent: int = 180
    leaky_slope: float = 0.2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls(**json.loads(text))


def encoder_sizes(size: int, layers: tuple[LayerSpec, ...]) -> list[int]:
    """The grid side after each encoder convolution."""
    sizes = [size]
    for layer in layers:
        sizes.append((sizes[-1] + 2 * layer.padding - layer.kernel) // layer.stride + 1)
    return sizes


def decoder_start(size: int, layers: tuple[LayerSpec, ...], output: LayerSpec) -> tuple[int, list[int]]:
    """The grid the decoder starts from, and each transposed convolution's output padding, such that
    the decoder ends at exactly `size` (found by running the layers backwards)."""
    out = size - 2 * output.padding + output.kernel - 1  # the output layer's input side
    paddings = []
    for layer in reversed(layers):
        for extra in range(layer.stride):  # output_padding in 0 .. stride-1 picks the exact side
            numerator = out + 2 * layer.padding - layer.kernel - extra
            if numerator >= 0 and numerator % layer.stride == 0:
                paddings.append(extra)
                out = numerator // layer.stride + 1
                break
        else:
            raise SpecError(f"--decoder {format_layers(layers)}: no start grid reaches {size}x{size} exactly")
    return out, paddings[::-1]


def decoder_sizes(grid: int, layers: tuple[LayerSpec, ...], output_paddings: list[int]) -> list[int]:
    """The grid side after each transposed convolution of the decoder, from its start grid."""
    sizes = []
    for layer, extra in zip(layers, output_paddings):
        grid = (grid - 1) * layer.stride - 2 * layer.padding + layer.kernel + extra
        sizes.append(grid)
    return sizes


class VAE(nn.Module):
    """Convolutional VAE with a Gaussian posterior, in the paper's configuration by default.

    The paper fixes the layers (in N@KxK-S notation), LeakyReLU then BatchNorm after every
    convolution, fully connected mu and Sigma heads with softplus on Sigma, and a latent size of 180.
    Where it is silent, this is the smallest completion that keeps to it:

    * Padding: (K - 1) // 2 on every convolution. The paper's encoder then maps 161 to 160, 80, 40
      and 20: four convolutions, as the paper lists (the authors' code had five, down to 10x10).
      The mu and Sigma heads read the flattened 768 x 20 x 20 grid.
    * Sigma is the posterior standard deviation: softplus(linear(h)) + 1e-5. The paper says softplus
      keeps Sigma positive; the authors' code put softplus on a log-variance, forcing every std >= 1.
    * The decoder starts with a linear layer from z to a C x G x G grid. C is the encoder's last width
      (768). G is the smallest grid the listed transposed convolutions (stride-2 layers with
      output_padding 0 or 1) take to exactly the input size; for 161 it is 21: 21 -> 21 -> 41 -> 81
      -> 161. No activation follows that linear layer: the convolution block after it has its own.
    * The output layer is a convolution to 3 channels in the decoder's own style (3@3x3-1 by default,
      stride 1), then a sigmoid, since images are in [0, 1]. It has no BatchNorm.
    * LeakyReLU slope 0.2, as in DFC-VAE (Hou et al.), whose perceptual loss the paper uses.

    Precision: under bf16 autocast the convolutions run in bf16, but the mu and Sigma heads, the
    reparameterisation z = mu + Sigma * eps and the decoder's input layer always run in fp32. In bf16,
    z would be rounded in steps of 2^-7 (0.0078 for |z| in [1, 2)), about the size of the posterior
    standard deviation of a dimension that carries ~5 nats: the sampling noise would drown in rounding.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        encoder = parse_layers(config.encoder, "--encoder")
        decoder = parse_layers(config.decoder, "--decoder")
        output = parse_layers(config.output_layer, "--output-layer")[0]
        if output.channels != 3 or output.stride != 1:
            raise SpecError(f"--output-layer {config.output_layer!r}: must be 3@KxK-1 (3 channels, stride 1)")
        sizes = encoder_sizes(config.image_size, encoder)
        if sizes[-1] < 1:
            raise SpecError(f"--encoder {config.encoder!r}: a {config.image_size}x{config.image_size} image shrinks "
                            f"to nothing ({' -> '.join(map(str, sizes))})")
        self.encoder_grid = sizes[-1]
        self.encoder = nn.Sequential(*self._blocks(3, encoder, nn.Conv2d, [0] * len(encoder)))
        flat = encoder[-1].channels * self.encoder_grid**2
        self.fc_mu = nn.Linear(flat, config.latent)
        self.fc_sigma = nn.Linear(flat, config.latent)
        grid, output_paddings = decoder_start(config.image_size, decoder, output)
        self.normalised_sides = sizes[1:] + decoder_sizes(grid, decoder, output_paddings)  # each BatchNorm's map
        self.start_shape = (encoder[-1].channels, grid, grid)
        self.fc_decode = nn.Linear(config.latent, encoder[-1].channels * grid * grid)
        self.decoder = nn.Sequential(*self._blocks(encoder[-1].channels, decoder, nn.ConvTranspose2d,
                                                   output_paddings))
        self.output = ImageConv2d(decoder[-1].channels, 3, output.kernel, 1, output.padding)

    def _blocks(self, channels: int, layers, conv, output_paddings):
        for layer, extra in zip(layers, output_paddings):
            kwargs = {"output_padding": extra} if conv is nn.ConvTranspose2d else {}
            kind = ImageConv2d if conv is nn.Conv2d and channels == 3 else conv
            yield kind(channels, layer.channels, layer.kernel, layer.stride, layer.padding, **kwargs)
            yield nn.LeakyReLU(self.config.leaky_slope)
            yield nn.BatchNorm2d(layer.channels)
            channels = layer.channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation (fp32) for images in [0, 1], shape (B, 3, S, S), S the model's
        `config.image_size` (`vae.augment.to_float(uint8_images, S)` makes them from uint8 (B, H, W, 3))."""
        self.check_input(x)
        h = self.encoder(x).flatten(1)
        with torch.autocast(h.device.type, enabled=False):
            h = h.float()
            return self.fc_mu(h), F.softplus(self.fc_sigma(h)) + SIGMA_FLOOR

    def check_input(self, x: torch.Tensor) -> None:
        """Images of another shape would fail deep in the mu head with a matrix-size error."""
        size = self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"images of shape {tuple(x.shape)}: this model encodes (B, 3, {size}, {size}) floats in "
                             f"[0, 1]; vae.augment.to_float(images, {size}) makes them from uint8 (B, H, W, 3) images "
                             "of any size, by area averaging as vae-train did")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            h = self.fc_decode(z.float()).view(-1, *self.start_shape)
        return torch.sigmoid(self.output(self.decoder(h)))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """Reconstruction, mu and sigma; `noise` is the reparameterisation's epsilon (drawn if None)."""
        mu, sigma = self.encode(x)
        if noise is None:
            noise = torch.randn_like(mu)
        with torch.autocast(mu.device.type, enabled=False):
            z = mu + sigma * noise.float()
        return self.decode(z), mu, sigma


def parameter_counts(model: VAE) -> dict[str, int]:
    """Parameters per part and in total."""
    parts = {"encoder": model.encoder, "mu and sigma heads": [model.fc_mu, model.fc_sigma],
             "decoder input layer": model.fc_decode, "decoder": model.decoder, "output layer": model.output}
    counts = {}
    for name, modules in parts.items():
        modules = modules if isinstance(modules, list) else [modules]
        counts[name] = sum(p.numel() for m in modules for p in m.parameters())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def describe(model: VAE) -> str:
    """A short text of the architecture and its parameter count (printed at the start of training)."""
    c = model.config
    counts = parameter_counts(model)
    parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items() if k != "total")
    return (f"VAE {c.image_size}x{c.image_size} -> encoder [{c.encoder}] -> {model.encoder_grid}x{model.encoder_grid}"
            f" -> latent {c.latent} -> {model.start_shape[1]}x{model.start_shape[2]} -> decoder [{c.decoder}] -> "
            f"{c.output_layer} -> {c.image_size}x{c.image_size}; parameters: {counts['total']:,} ({parts})")

"""VGG-19 truncated after relu3_1, the loss network of the feature perceptual loss, and its weights.

Nothing is downloaded. Weights come from `--vgg-weights PATH` (a state dict of torchvision's
`vgg19().features`, full or truncated at relu3_1, or of the whole `vgg19()` model), or from torch's
hub cache where torchvision would have saved `vgg19-dcbb9e9d.pth`.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError, exception_line, flat_text
from vae.config import RANDOM_VGG as RANDOM
from vae.imageconv import ImageConv2d

TAPS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11}  # indices in vgg19().features
TRUNCATED_CONFIG = [64, 64, "M", 128, 128, "M", 256]  # vgg19().features[:12], same indices
CONV_INDICES = (0, 2, 5, 7, 10)
# Where the convolutions of vgg19().features lie after relu3_1; VGG-16's differ from there on (it has 3 per block
# after the second, VGG-19 4), though up to relu3_1 the two have the same layers: its weights would load silently.
VGG19_LATER_CONVS = frozenset({12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34})
VGG16_LATER_CONVS = frozenset({12, 14, 17, 19, 21, 24, 26, 28})
# The correlation of neighbouring taps of conv1_1's 3x3 filters: 0.53 in ImageNet-trained VGG-19 (its filters are
# smooth colour and edge detectors), 0.00 +- 0.02 in a randomly initialised one, whose taps are independent draws
# (30 of torchvision's initialisations: -0.04 to +0.06). Weights below this are taken for untrained: 5 sd from 0,
# and well under trained weights, whose other copies (torchvision's own training) were not at hand to measure.
TRAINED_STRUCTURE = 0.1
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"


class VGGWeightsError(UserError, RuntimeError):
    """No usable VGG-19 weights; the message says where to put them."""


def truncated_vgg19() -> nn.Sequential:
    """The layers of torchvision's vgg19().features up to and including relu3_1 (indices 0-11). conv1_1 reads
    the image's 3 channels and is a vae.imageconv.ImageConv2d that applies relu1_1 itself, so that the Triton
    kernels of --image-conv triton make the activated map in the convolution's own pass; index 1, relu1_1's
    place (and tap), holds an Identity, and the weights keep torchvision's names."""
    # written out rather than taken from torchvision's make_layers, so that training imports no torchvision; the
    # layers are made in make_layers' order (an ImageConv2d draws as the nn.Conv2d it is), so random weights draw
    # the same
    channels = TRUNCATED_CONFIG[0]
    layers = [ImageConv2d(3, channels, kernel_size=3, padding=1, relu=True), nn.Identity()]
    for width in TRUNCATED_CONFIG[1:]:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers)


def hub_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _missing_weights_message() -> str:
    return ("no VGG-19 weights for the perceptual loss. Either pass --vgg-weights PATH, a state dict of "
            "torchvision's vgg19().features (full, or truncated after relu3_1), or put torchvision's "
            f"{TORCHVISION_FILE} at {hub_cache_path()} (on a machine with network: python -c \"import "
            "torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\" saves it there; copy it over). "
            "--recon pixel trains without VGG; --vgg-weights random is for tests only")


def _features_only(state: dict, source: str) -> dict:
    """Keys of the truncated features ('0.weight' ...), from a features or whole-model state dict."""
    if any(key.startswith("features.") for key in state):
        state = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
    wanted = {f"{i}.{kind}" for i in CONV_INDICES for kind in ("weight", "bias")}
    missing = sorted(wanted - set(state))
    if missing:
        raise VGGWeightsError(f"{source}: not a VGG-19 features state dict (missing {', '.join(missing)}); "
                              "give the weights of torchvision's vgg19() or of its .features")
    later = set()  # the indices of convolutions (4-d weights) after relu3_1
    for key, value in state.items():
        index = key.split(".")[0]
        if index.isdigit() and int(index) > max(CONV_INDICES) and isinstance(value, torch.Tensor) and value.dim() == 4:
            later.add(int(index))
    if later and not later <= VGG19_LATER_CONVS:
        what = "VGG-16's" if later <= VGG16_LATER_CONVS else "not VGG-19's"
        raise VGGWeightsError(f"{source}: the layers after relu3_1 lie at {what} places (convolutions at "
                              f"{', '.join(map(str, sorted(later)))}): these are another network's weights, which "
                              "would load into VGG-19's first layers and give another loss than the paper's; give "
                              "the weights of torchvision's vgg19()")
    return {key: state[key] for key in wanted}


def filter_structure(weight: torch.Tensor) -> float:
    """The correlation of horizontally and vertically neighbouring taps over a layer's filters (out, in, k, k):
    about 0.5 for the first layer of an ImageNet-trained VGG, near 0 for random ones."""
    w = weight.detach().float()
    first = torch.cat([w[..., :, :-1].reshape(-1), w[..., :-1, :].reshape(-1)])
    second = torch.cat([w[..., :, 1:].reshape(-1), w[..., 1:, :].reshape(-1)])
    return float(torch.corrcoef(torch.stack([first, second]))[0, 1].nan_to_num(0.0))


def load_vgg(weights: str | None) -> tuple[nn.Sequential, dict]:
    """The frozen truncated VGG-19 and a record of where its weights came from (for the run config)."""
    model = truncated_vgg19()
    if weights == RANDOM:
        warnings.warn("--vgg-weights random: the VGG-19 is randomly initialised, so the 'perceptual' loss is "
                      "NOT perceptual. Use this for tests only.", stacklevel=2)
        record = {"source": RANDOM}
    else:
        path = Path(weights) if weights else hub_cache_path()
        if not path.is_file():
            raise VGGWeightsError((f"--vgg-weights {path}: file not found. " if weights else "")
                                  + _missing_weights_message())
        named = f"--vgg-weights {path}" if weights else f"{path} (torch's hub cache)"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise VGGWeightsError(f"{named}: cannot be read as a torch state dict ({exception_line(exc)})") from None
        if not isinstance(state, dict):
            raise VGGWeightsError(f"{named}: holds a {type(state).__name__}, not a state dict; give the "
                                  "weights of torchvision's vgg19() or of its .features")
        state = _features_only(state, named)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # torch lists every mismatch on lines of its own
            detail = flat_text(exc, 400)
            raise VGGWeightsError(f"{named}: the weights do not fit VGG-19's first layers ({detail})") from None
        structure = filter_structure(model[0].weight)
        if structure < TRAINED_STRUCTURE:
            raise VGGWeightsError(
                f"{named}: these weights look untrained: the taps of the first layer's 3x3 filters do "
                f"not go together (neighbours correlate at r = {structure:.2f}; ImageNet-trained VGG-19: about 0.5), "
                "as in a model saved without its pretrained weights (torchvision.models.vgg19() without weights=). "
                "Random features make a loss that is not perceptual; save the ImageNet weights "
                "(torchvision.models.vgg19(weights='IMAGENET1K_V1')), or give --vgg-weights random to train with "
                "random features on purpose")
        record = {"source": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval(), record

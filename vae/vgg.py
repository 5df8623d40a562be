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
from torchvision.models.vgg import make_layers

from common.errors import UserError, exception_line
from vae.config import RANDOM_VGG as RANDOM

TAPS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11}  # indices in vgg19().features
TRUNCATED_CONFIG = [64, 64, "M", 128, 128, "M", 256]  # vgg19().features[:12], same indices
CONV_INDICES = (0, 2, 5, 7, 10)
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"


class VGGWeightsError(UserError, RuntimeError):
    """No usable VGG-19 weights; the message says where to put them."""


def truncated_vgg19() -> nn.Sequential:
    """The layers of torchvision's vgg19().features up to and including relu3_1 (indices 0-11)."""
    return make_layers(TRUNCATED_CONFIG, batch_norm=False)


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
        raise VGGWeightsError(f"{source}: not a VGG-19 features state dict (missing {', '.join(missing)})")
    return {key: state[key] for key in wanted}


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
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise VGGWeightsError(f"--vgg-weights {path}: cannot be read as a torch state dict "
                                  f"({exception_line(exc)})") from None
        state = _features_only(state, str(path))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise VGGWeightsError(f"{path}: the weights do not fit VGG-19's first layers ({exc})") from None
        record = {"source": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval(), record

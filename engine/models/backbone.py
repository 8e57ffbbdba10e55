"""ResNet trunks from torchvision returning C3, C4, C5 (strides 8, 16, 32), with any number of input bands."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from engine.core.errors import ConfigError

_OUT_CHANNELS: dict[str, tuple[int, int, int]] = {
    "resnet18": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
}


def _imagenet_weights(name: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights enum entry used for ``pretrained: imagenet``."""
    if name == "resnet18":
        return torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    return torchvision.models.ResNet50_Weights.IMAGENET1K_V1


def imagenet_checkpoint_path(name: str) -> Path:
    """Where torchvision caches (and looks for) the ImageNet checkpoint of ``name``: place the file here offline."""
    url = _imagenet_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_imagenet_state(name: str) -> dict[str, Tensor]:
    weights = _imagenet_weights(name)
    path = imagenet_checkpoint_path(name)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # network down, proxy refused, truncated/corrupt cached file
        raise ConfigError(
            f"model config key 'pretrained': 'imagenet' needs the {name} ImageNet checkpoint; expected it cached at "
            f"{str(path)!r} or downloadable from {weights.url}, found: {type(exc).__name__}: {exc}. "
            f"Offline: download that URL on another machine and place the file at that path "
            f"(or set 'pretrained' to the file's path)."
        ) from exc


def _load_local_state(path_str: str) -> dict[str, Tensor]:
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(
            f"model config key 'pretrained': expected a torchvision ResNet state-dict file, "
            f"found no file at {path_str!r}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"model config key 'pretrained': expected a torch state dict in {path_str!r}, "
            f"found an unreadable file: {exc}"
        ) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"model config key 'pretrained': expected a state dict in {path_str!r}, found {type(state)}")
    return state


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` bands: the first min(3, n) get the RGB filters, extra bands the
    mean of the RGB filters (so a 4th band such as NIR starts as an average colour detector rather than noise)."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        old = conv.weight
        keep = min(in_channels, old.shape[1])
        new.weight[:, :keep] = old[:, :keep]
        if in_channels > keep:
            new.weight[:, keep:] = old.mean(dim=1, keepdim=True)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class ResNetTrunk(nn.Module):
    """torchvision ResNet without avgpool/fc; ``forward`` returns [C3, C4, C5]."""

    def __init__(self, name: str, in_channels: int = 3, pretrained: str | None = None) -> None:
        super().__init__()
        if name not in _OUT_CHANNELS:
            raise ConfigError(f"model config key 'backbone': expected one of {sorted(_OUT_CHANNELS)}, found {name!r}")
        net = getattr(torchvision.models, name)(weights=None)
        if pretrained is not None:
            state = _load_imagenet_state(name) if pretrained == "imagenet" else _load_local_state(pretrained)
            self._load_trunk_state(net, state, pretrained)
        self.conv1 = adapt_first_conv(net.conv1, in_channels)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels: tuple[int, int, int] = _OUT_CHANNELS[name]

    @staticmethod
    def _load_trunk_state(net: nn.Module, state: dict[str, Tensor], source: str) -> None:
        """Load a torchvision ResNet state dict; the classifier (fc.*) may be absent, every trunk key must match."""
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # tensor shape mismatch (e.g. a resnet50 file for resnet18)
            raise ConfigError(
                f"model config key 'pretrained' ({source!r}): expected a torchvision ResNet state dict for this "
                f"backbone, found tensors of other shapes: {str(exc)[:300]}"
            ) from exc
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        unexpected = [k for k in result.unexpected_keys if not k.startswith("fc.")]
        if missing or unexpected:
            raise ConfigError(
                f"model config key 'pretrained' ({source!r}): expected a torchvision ResNet state dict for this "
                f"backbone, found missing keys {missing[:5]} and unexpected keys {unexpected[:5]}"
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]

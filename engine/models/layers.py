"""Small building blocks shared by the necks and heads."""

from __future__ import annotations

from torch import nn


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    act: str | None = "relu",
) -> nn.Sequential:
    """Conv (no bias, BN follows) + BatchNorm + optional activation ("relu", "leaky" slope 0.1, or None)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "leaky":
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)

"""FPN and PAFPN necks: C3..C5 in, P3..P6 out (strides 8, 16, 32, 64), all with the same channel count.

P6 is a stride-2 3×3 conv on P5 (after P5's output conv), not on C5: it costs 9·c² weights whatever the backbone
width (a conv on ResNet50's 2048-channel C5 would add 4.7 M weights to the teacher only), and P6 then carries the
top-down-fused P5 rather than raw C5. PAFPN's bottom-up path runs over all four levels, P6 included.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.layers import conv_norm_act


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017): 1×1 laterals, nearest top-down sum, 3×3 output convs, extra P6."""

    def __init__(self, in_channels: tuple[int, ...], channels: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_norm_act(c, channels, 1, act=None) for c in in_channels)
        self.output = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in in_channels)
        self.extra = conv_norm_act(channels, channels, 3, stride=2)
        self.out_channels = channels

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            # size= (not scale_factor) so odd inputs like 321×257 (41×33 vs 21×17 maps) line up
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, lat)]
        outs.append(self.extra(outs[-1]))
        return outs


class PAFPN(FPN):
    """FPN plus PANet's bottom-up path aggregation (Liu et al. 2018): N_{k+1} = P_{k+1} + down(N_k), then 3×3."""

    def __init__(self, in_channels: tuple[int, ...], channels: int = 256) -> None:
        super().__init__(in_channels, channels)
        levels = len(in_channels) + 1
        self.down = nn.ModuleList(conv_norm_act(channels, channels, 3, stride=2) for _ in range(levels - 1))
        self.pa_output = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in range(levels))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p = super().forward(feats)
        n = [p[0]]
        for k in range(1, len(p)):
            n.append(p[k] + self.down[k - 1](n[-1]))
        return [conv(x) for conv, x in zip(self.pa_output, n)]


def build_neck(name: str, in_channels: tuple[int, ...], channels: int) -> FPN:
    """``fpn`` (student) or ``pafpn`` (teacher)."""
    return PAFPN(in_channels, channels) if name == "pafpn" else FPN(in_channels, channels)

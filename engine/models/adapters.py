"""Feature-distillation adaptation layers: map each student neck level to the teacher's width (paper: 3×3 conv,
the reference code: 1×1). Trained with the student, dropped at export."""

from __future__ import annotations

from torch import Tensor, nn

from engine.core.errors import ConfigError


class FeatureAdapters(nn.Module):
    """One conv per pyramid level, student channels → teacher channels; ``forward`` maps a list of levels."""

    def __init__(
        self, student_channels: int = 256, teacher_channels: int = 256, num_levels: int = 4, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ConfigError(f"adapter kernel_size: expected 1 or 3, found {kernel_size!r}")
        self.convs = nn.ModuleList(
            nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=kernel_size // 2)
            for _ in range(num_levels)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != len(self.convs):
            raise ValueError(f"FeatureAdapters: expected {len(self.convs)} levels, found {len(features)}")
        return [conv(f) for conv, f in zip(self.convs, features)]

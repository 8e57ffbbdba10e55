"""Chipping: tiles → chip dataset (windows with a real stride, masks, eroded masks, boxes, band statistics)."""

from engine.chip.chipper import chip_dataset, chip_tiles
from engine.chip.stats import ChipSummary
from engine.chip.windows import axis_starts, chip_windows

__all__ = ["ChipSummary", "axis_starts", "chip_dataset", "chip_tiles", "chip_windows"]

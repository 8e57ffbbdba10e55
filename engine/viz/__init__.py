"""Pictures a user looks at: chip previews and sample predictions next to ground truth (matplotlib, Agg)."""

from engine.viz.chips import preview_chips
from engine.viz.predictions import plot_predictions

__all__ = ["plot_predictions", "preview_chips"]

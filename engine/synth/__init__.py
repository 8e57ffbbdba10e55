"""Synthetic ISPRS-like twin (REFERENCE §4): Vaihingen-like and Potsdam-like tiles in the real ISPRS layouts.

Scenes are laid out in metres (roads, houses, cars, trees, soil), rasterised at each domain's GSD, shaded with
cast shadows, passed through a per-domain sensor model and written as georeferenced GeoTIFFs with RGB-coded
labels and eroded ``noBoundary`` labels. ``python -m engine.synth --help`` for the CLI.
"""

from engine.synth.domains import DOMAINS, DomainSpec
from engine.synth.generate import SynthSummary, generate

__all__ = ["DOMAINS", "DomainSpec", "SynthSummary", "generate"]

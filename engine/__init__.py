"""pmtl engine: partial multi-task learning (detection + segmentation) with knowledge distillation.

Organised by pipeline stage: ``synth`` → ``data``/``chip`` → ``models``/``losses`` → ``train`` →
``evaluate`` → ``export`` → ``predict``. ``core`` holds what every stage shares (classes, progress/cancel
protocol, atomic file writes, config validation).
"""

__version__ = "0.1.0"

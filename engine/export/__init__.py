"""ONNX export with a versioned, JSON-Schema-validated metadata block (pmtl keys + the Deepness plugin's keys).

``export_onnx(model, out, metadata, tile_size)`` / ``export_checkpoint(ckpt, out)`` need torch;
``engine.core.modelio`` (schema, reader) does not, so inference can import it without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_checkpoint", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # lazy: importing engine.core.modelio must not pull in torch
        from engine.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(name)

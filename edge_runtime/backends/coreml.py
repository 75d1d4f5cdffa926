"""CoreML backend (macOS only: Core ML prediction does not exist elsewhere)."""
from __future__ import annotations

import platform

import numpy as np

from . import BackendError


class CoreMLBackend:
    kind = "coreml"

    def __init__(self, path, threads: int = 0, scale: int | None = None, compute_units: str = "ALL"):
        if platform.system() != "Darwin":
            raise BackendError(f"{path}: CoreML prediction needs macOS (this is {platform.system()}); "
                               "use the TFLite or ONNX artifact here")
        import coremltools as ct

        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:
            raise BackendError(f"{path}: cannot load as a CoreML model ({str(exc).splitlines()[0][:200]})") from None
        meta = self.model.user_defined_metadata
        self.scale = int(meta.get("scale", scale or 0)) or scale
        h, w = (int(v) for v in meta.get("tile", "0x0").split("x"))
        self.input_hw = (h, w) if h else None
        self.precision = meta.get("precision")
        self.name = f"coreml ({compute_units})"

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        y = self.model.predict({"lr": tile.transpose(2, 0, 1)[None].astype(np.float32)})["sr"]
        return np.asarray(y)[0].transpose(1, 2, 0)

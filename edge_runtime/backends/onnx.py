"""ONNX Runtime backend (CPU)."""
from __future__ import annotations

import numpy as np

from . import BackendError
from .common import check_io_shapes


class OnnxBackend:
    kind = "onnx"
    providers = ("CPUExecutionProvider",)   # a subclass for another execution provider changes this (docs/extending.md)

    def __init__(self, path, threads: int = 0, scale: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.runtime = ort.InferenceSession(str(path), opts, providers=list(self.providers))
        except Exception as exc:
            raise BackendError(f"{path}: cannot load as an ONNX model ({str(exc).splitlines()[0][:200]})") from None
        inp, out = self.runtime.get_inputs()[0], self.runtime.get_outputs()[0]
        self.input_name = inp.name
        # NCHW, as exported; symbolic dims are strings.
        self.input_hw, self.scale = check_io_shapes(path, inp.shape, out.shape, layout="NCHW", scale=scale)
        self.precision = "fp32"
        self.name = "onnxruntime" + ("" if self.providers == OnnxBackend.providers else f" ({self.providers[0]})")

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(tile.transpose(2, 0, 1)[None], dtype=np.float32)
        y = self.runtime.run(None, {self.input_name: x})[0]
        return y[0].transpose(1, 2, 0)

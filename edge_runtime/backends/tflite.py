"""TFLite backend: ai-edge-litert's interpreter, else tflite-runtime, else TensorFlow's own.

XNNPACK (the default CPU delegate) with --threads; int8/int16 inputs and outputs
are quantized and dequantized with the model's own scale and zero point.

The kit's TFLite models are resizable: a window smaller than the model's input (a
frame smaller than the tile) runs at its own size, the interpreter's input resized
rather than the window padded, so a small image gets exactly its whole-frame output
(padding changes the DRA coefficients and the borders). run.py's --tile can also pick
another window size, or 0 for the whole frame. Models that refuse a resize fall back
to padding.
"""
from __future__ import annotations

import numpy as np

from . import BackendError, cpu_threads
from .common import check_io_shapes
from ..tiler import pad_to


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # pyright: ignore[reportMissingImports]  (optional)
        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        raise BackendError("no TFLite interpreter found: pip install ai-edge-litert "
                           "(or tflite-runtime, or tensorflow)") from None


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (q.astype(np.float32) - zero) * scale


class TFLiteBackend:
    kind = "tflite"

    def __init__(self, path, threads: int = 0, scale: int | None = None):
        Interpreter, self.runtime = _interpreter_class()
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=cpu_threads(threads))
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{path}: cannot load as a TFLite model ({str(exc).splitlines()[0][:200]})") from None
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        if len(self.interp.get_input_details()) != 1:
            raise BackendError(f"{path}: expected one image input, found {len(self.interp.get_input_details())}")
        self.input_hw, self.scale = check_io_shapes(path, list(self.inp["shape"]), list(self.out["shape"]),
                                                    layout="NHWC", scale=scale)
        kinds = {np.float32: "float", np.int8: "int8", np.uint8: "uint8", np.int16: "int16"}
        self.io = f"{kinds.get(self.inp['dtype'], self.inp['dtype'])} I/O"
        self.precision = None   # known from the manifest; shapes alone cannot tell fp16 from fp32
        self.name = f"tflite ({self.runtime}, XNNPACK)"
        self.resizable = True   # any window size runs (see the module docstring); False after a refused resize
        self.model_hw = self._shape = tuple(self.input_hw)

    def take_any_window(self):
        """Stop imposing the model's own tile: the caller's windows (or whole frames) run as they come."""
        self.input_hw = None

    def _resize(self, hw: tuple[int, int]) -> bool:
        try:
            self.interp.resize_tensor_input(self.inp["index"], [1, *hw, 3], strict=False)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError):
            return False
        self._shape = hw
        return True

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        h, w = tile.shape[:2]
        if (h, w) != self._shape and not self._resize((h, w)):
            self.resizable = False
            if h > self.model_hw[0] or w > self.model_hw[1] or not self._resize(self.model_hw):
                raise BackendError(f"this TFLite model runs only {self.model_hw[0]}x{self.model_hw[1]} windows")
            return self(pad_to(tile, *self.model_hw))[: h * self.scale, : w * self.scale]
        x = tile[None].astype(np.float32)
        if self.inp["dtype"] != np.float32:
            x = _quantize(x, self.inp)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            y = _dequantize(y, self.out)
        return y[0]

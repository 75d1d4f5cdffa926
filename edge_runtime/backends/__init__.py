"""One small class per runtime. Each takes an (h, w, 3) float32 RGB tile in [0, 1]
and returns the (h*s, w*s, 3) float32 output. Backends are imported only when
asked for, so the TFLite and ONNX paths never import torch or TensorFlow.

Every backend has: name, scale, input_hw ((h, w) for a fixed-shape model, None
when any size runs), precision, and __call__(tile).
"""
from __future__ import annotations


class BackendError(RuntimeError):
    """A model that cannot be used by this kit; the message says why in one line."""


def open_backend(kind: str, path=None, **kwargs):
    if kind == "tflite":
        from drsan_kit.edge_runtime.backends.tflite import TFLiteBackend
        return TFLiteBackend(path, **kwargs)
    if kind == "onnx":
        from drsan_kit.edge_runtime.backends.onnx import OnnxBackend
        return OnnxBackend(path, **kwargs)
    if kind == "coreml":
        from drsan_kit.edge_runtime.backends.coreml import CoreMLBackend
        return CoreMLBackend(path, **kwargs)
    if kind == "torch":
        from drsan_kit.edge_runtime.backends.torch import TorchBackend
        return TorchBackend(path, **kwargs)
    raise ValueError(f"unknown backend {kind!r}")

"""One small class per runtime, found through the registry in edge_runtime/contract.py.

Each takes an (h, w, 3) float32 RGB tile in [0, 1] and returns the (h*s, w*s, 3)
float32 output. A backend's module is imported only when it is asked for, so the
TFLite and ONNX paths never import torch or TensorFlow.

Every backend class has: kind (its registry key, a class attribute), name, scale,
input_hw ((h, w) for a fixed-shape model, None when any size runs), precision and
__call__(tile). What it can do beyond that (resize a fixed-shape model, take the DRA
coefficients from outside) is declared in its registry entry, not probed.
A new runtime is one module here plus one register_backend() call (docs/extending.md).
"""
from __future__ import annotations

import importlib

from ...core.provenance import usable_cores
from ..contract import backend_spec


class BackendError(RuntimeError):
    """A model that cannot be used by this kit; the message says why in one line."""


def backend_class(kind: str):
    """The class registered for `kind`, its module imported now; BackendError when the runtime is missing."""
    spec = backend_spec(kind)
    try:
        module = importlib.import_module(spec.module, package=__name__)   # ".tflite": a module of this folder
    except ImportError as exc:
        raise BackendError(f"the {kind} backend needs {exc.name or 'a missing package'}: {spec.install}") from None
    return getattr(module, spec.cls)


def open_backend(kind: str, path=None, **kwargs):
    """An open backend of the registered `kind` for the model at `path` (for torch: a checkpoint)."""
    return backend_class(kind)(path, **kwargs)


def cpu_threads(requested: int = 0) -> int:
    """Threads to run with: `requested` when > 0, else every CPU this process may use. TFLite's
    Python interpreter left to its own default runs XNNPACK on one thread, half speed on two cores."""
    return requested if requested > 0 else usable_cores() or 1

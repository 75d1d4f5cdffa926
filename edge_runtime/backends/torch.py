"""The PyTorch reference backend (FP32; CUDA when present)."""
from __future__ import annotations

import numpy as np
import torch

from ...core.checkpoint import load_checkpoint, resolve_weights


class TorchBackend:
    kind = "torch"

    def __init__(self, weights=None, variant: str = "32s", scale: int = 4, model=None, device: str | None = None,
                 threads: int = 0, input_hw: tuple[int, int] | None = None):
        """input_hw: run as a fixed-shape model of that LR tile (what an emulated CoreML model is)."""
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is None:
            self.weights = resolve_weights(weights, variant, scale)
            model, _ = load_checkpoint(self.weights, variant, scale)
        self.model = model.to(self.device).eval()
        self.scale = model.scale
        self.variant = model.variant.name
        self.input_hw = tuple(input_hw) if input_hw else None
        self.precision = "fp32"
        self.name = f"torch-{self.device.type}"

    def _tensor(self, img: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None].to(self.device)

    @torch.inference_mode()
    def coefficients(self, frame: np.ndarray) -> list:
        """The DRA vector r of every DRAG for a whole (H, W, 3) frame."""
        return self.model.coefficients(self._tensor(frame))

    @torch.inference_mode()
    def __call__(self, tile: np.ndarray, coeffs=None) -> np.ndarray:
        """coeffs: r of every DRAG from outside (e.g. the whole frame's), else each tile computes its own."""
        y = self.model(self._tensor(tile), coeffs=coeffs).clamp_(0.0, 1.0)
        return y[0].permute(1, 2, 0).float().cpu().numpy()

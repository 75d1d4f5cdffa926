"""PyTorch -> ONNX, the first step of every converter.

The exported graph differs from the training model in two ways, both exact:
- pixel shuffle runs in DCR order (one native DepthToSpace in TFLite rather than
  reshape/transpose): the upsampler convs' output channels are permuted so that
  the result equals PyTorch's CRD pixel_shuffle;
- the output is clamped to [0, 1] inside the graph.
The integer graphs also spell PReLU from depthwise convs and give every
concatenation input a requantizing identity 1x1 conv (both exact in float).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.model import DRSAN


def crd_to_dcr_permutation(channels_out: int, s: int) -> torch.Tensor:
    """perm[k_dcr] = k_crd for the conv feeding a depth-to-space of block s."""
    c = channels_out
    perm = torch.empty(c * s * s, dtype=torch.long)
    for i in range(s):
        for j in range(s):
            for ch in range(c):
                perm[(i * s + j) * c + ch] = ch * s * s + i * s + j
    return perm


def to_dcr(model: DRSAN) -> DRSAN:
    """A copy of the model whose upsampler uses DCR depth-to-space, with the same outputs."""
    if model.upsample_order == "dcr":
        return copy.deepcopy(model)
    out = copy.deepcopy(model)
    for conv, s in zip(out.upsampler.convs, out.upsampler.factors):
        perm = crd_to_dcr_permutation(conv.out_channels // (s * s), s)
        with torch.no_grad():
            conv.weight.copy_(conv.weight[perm])
            conv.bias.copy_(conv.bias[perm])
    out.upsampler.order = "dcr"
    return out


PRELU_FORMS = ("sub", "affine")


class DecomposedPReLU(torch.nn.Module):
    """PReLU from ops that every TFLite mode quantizes well and XNNPACK runs in int8.

    int8 PRELU has no XNNPACK kernel (a slow reference loop) and int16x8 has no PRELU
    kernel at all. The slopes live in depthwise convs so they get per-channel
    quantization (a plain multiply would share one scale across channels and cost
    about 10 dB of fidelity). Two spellings of the same function:
    - "sub" (default): relu(x) + depthwise1x1(x - relu(x), a). Its x - relu(x) holds
      the negative parts alone; their calibrated range is narrow and clips, and
      eval/sensitivity.py ranks these SUBs as the worst int8 layers;
    - "affine": depthwise1x1(x, a) + depthwise1x1(relu(x), 1 - a), which removes
      those outliers but, measured end to end, does not change the int8 drift
      (reports/sensitivity_32s_x4*), so the shipped artifacts keep "sub".
    """

    def __init__(self, prelu: torch.nn.PReLU, form: str = "sub"):
        super().__init__()
        if form not in PRELU_FORMS:
            raise ValueError(f"PReLU form must be one of {PRELU_FORMS}")
        self.form = form
        self.weight = torch.nn.Parameter(prelu.weight.detach().clone().reshape(-1, 1, 1, 1))

    def forward(self, x):
        groups = self.weight.shape[0]
        # relu(x) spelled as relu(unit depthwise conv): TFLite fuses the relu into the
        # conv, which XNNPACK runs in int8, while a standalone int8 RELU has no XNNPACK
        # kernel and runs ~20x slower (measured: eval/op_speed.py).
        pos = torch.relu(F.conv2d(x, torch.ones_like(self.weight), groups=groups))
        if self.form == "sub":
            return pos + F.conv2d(x - pos, self.weight, groups=groups)
        return F.conv2d(x, self.weight, groups=groups) + F.conv2d(pos, 1 - self.weight, groups=groups)


def _decompose_prelu(module: torch.nn.Module, form: str):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.PReLU):
            setattr(module, name, DecomposedPReLU(child, form))
        else:
            _decompose_prelu(child, form)


class RequantizedConcat(torch.nn.Module):
    """Concatenation whose every input passes an identity 1x1 conv first: the same values.

    int8 CONCATENATION stores all its inputs on its output's grid, and the TFLite quantizer
    gives that grid to the tensors that feed it. Without this op the head features, which
    also feed DRAG 0's blocks, its DRA sums and the global skip, would be rounded on the
    concatenation's wider range everywhere (they were the costliest int8 tensor). With it,
    each input keeps its own range for its other uses and is requantized, exactly, for the
    concatenation alone (identity weights are exact in per-channel int8).

    A full 1x1 conv rather than the cheaper unit depthwise conv: the TFLite converter merges
    a unit depthwise conv with the identical one that spells relu(x) in the next block's
    PReLU (DecomposedPReLU), which un-fuses that ReLU into a standalone int8 RELU with no
    XNNPACK kernel; measured, that made the int8 model slower than fp32. The identity conv
    costs C*C multiply-adds per pixel (about 5% of DRSAN-32s's) and XNNPACK runs it in int8.

    With shifts (a staggered concatenation, core/stagger.py), the identity conv writes each input
    once per shift, the shift in its bias, in core.model.Concat's order.
    """

    def __init__(self, shifts: tuple[float, ...] = ()):
        super().__init__()
        self.shifts = tuple(shifts)

    def forward(self, feats):
        return torch.cat([self._requantized(f) for f in feats], dim=1)

    def _requantized(self, f):
        c, copies = f.shape[1], max(len(self.shifts), 1)
        eye = torch.eye(c, dtype=f.dtype, device=f.device)[:, :, None, None]
        if not self.shifts:
            return F.conv2d(f, eye)
        bias = torch.tensor(self.shifts, dtype=f.dtype, device=f.device).repeat_interleave(c)
        return F.conv2d(f, eye.repeat(copies, 1, 1, 1), bias)


def _requantize_concatenations(model: DRSAN):
    for drag in model.body:
        drag.concat = RequantizedConcat(drag.concat.shifts)


def deploy_model(model: DRSAN, decompose_prelu: bool = False, prelu_form: str = "sub") -> DRSAN:
    """The graph that converters export: DCR upsampler, output clamped to [0, 1], eval mode, on the CPU.

    decompose_prelu (the integer modes): PReLU from depthwise convs, and concatenation inputs
    requantized (RequantizedConcat), the graph core/qat.py simulates."""
    m = to_dcr(model).cpu().eval()
    m.clamp = True
    if decompose_prelu:
        _decompose_prelu(m, prelu_form)
        _requantize_concatenations(m)
    return m


def export_onnx(model: DRSAN, path, tile: tuple[int, int], dynamic: bool = False, opset: int = 17) -> Path:
    """Write model (already through deploy_model) to ONNX: input "lr" (1,3,h,w) -> output "sr"."""
    path = Path(path)
    x = torch.rand(1, 3, *tile)
    axes = {"lr": {2: "height", 3: "width"}, "sr": {2: "out_height", 3: "out_width"}} if dynamic else None
    tmp = path.with_name(f".{path.name}.part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(tmp), input_names=["lr"], output_names=["sr"], opset_version=opset,
                          dynamic_axes=axes, dynamo=False, do_constant_folding=True)
    tmp.replace(path)
    return path

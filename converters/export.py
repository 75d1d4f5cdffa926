"""PyTorch -> ONNX, the first step of every converter.

The exported graph differs from the training model in two ways, both exact:
- pixel shuffle runs in DCR order (one native DepthToSpace in TFLite rather than
  reshape/transpose): the upsampler convs' output channels are permuted so that
  the result equals PyTorch's CRD pixel_shuffle;
- the output is clamped to [0, 1] inside the graph.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from drsan_kit.core.model import DRSAN


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


class DecomposedPReLU(torch.nn.Module):
    """PReLU as relu(x) + depthwise1x1(x - relu(x), slopes).

    The same function from ops that every TFLite mode quantizes well and XNNPACK
    runs in int8: int8 PRELU has no XNNPACK kernel (a slow reference loop) and
    int16x8 has no PRELU kernel at all. The slopes live in a depthwise conv so they
    get per-channel quantization; a plain multiply would share one scale across
    channels and cost about 10 dB of fidelity.
    """

    def __init__(self, prelu: torch.nn.PReLU):
        super().__init__()
        self.weight = torch.nn.Parameter(prelu.weight.detach().clone().reshape(-1, 1, 1, 1))

    def forward(self, x):
        pos = torch.relu(x)
        return pos + F.conv2d(x - pos, self.weight, groups=self.weight.shape[0])


def _decompose_prelu(module: torch.nn.Module):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.PReLU):
            setattr(module, name, DecomposedPReLU(child))
        else:
            _decompose_prelu(child)


def deploy_model(model: DRSAN, decompose_prelu: bool = False) -> DRSAN:
    """The graph that converters export: DCR upsampler, output clamped to [0, 1], eval mode, on the CPU."""
    m = to_dcr(model).cpu().eval()
    m.clamp = True
    if decompose_prelu:
        _decompose_prelu(m)
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

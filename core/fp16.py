"""FP16 emulation of a DRSAN in PyTorch: what a half-precision runtime (CoreML on the
Neural Engine/GPU, TFLite fp16 on a GPU delegate) computes, estimated on any CPU.

Weights are rounded to fp16 and every layer's output (convolutions, PReLUs, each
DRAG and the upsampler) is rounded to fp16 before the next layer reads it. The
element-wise products inside a DRAG stay fp32, so this is an estimate, and the
tools that use it say so.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _round_fp16(_module, _inputs, output):
    return output.to(torch.float16).to(torch.float32)


def fp16_emulated(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    for mod in m.modules():
        if mod is not m:
            mod.register_forward_hook(_round_fp16)
    return m

"""Staggered copies of the direct path: more resolution for the int8 tensors that carry the image.

Half of the int8 error sits in a few tensors on the image's way to the output (the skip head conv,
the tail conv and their sum; eval/int8_budget.py): they span the image's range, so one int8 step
is about one 8-bit level, and nothing after them averages their rounding out. An int8 graph cannot
give them more bits, but it can carry them K times, each copy shifted by 1/K of an int8 step
before it is rounded, and average the copies in the next convolution's int32 accumulator. The
sum of K roundings staggered by 1/K of a step is one rounding on a K times finer grid (Hermite's
identity: floor(z) + floor(z + 1/K) + ... + floor(z + (K-1)/K) = floor(K z)), so the copies
together hold log2(K) more bits.

The rewrite computes the same float function: the copies' shifts are symmetric about zero, so
they cancel in the average, at the frame border too (every copy is zero-padded alike). It costs
the tail conv K times its outputs and the first upsampler conv K times its inputs. The shifts
follow from the int8 ranges, so it is applied to a quantization-aware checkpoint, whose ranges
are fixed, at conversion time (converters/to_tflite.py --qat CKPT --stagger K); the checkpoint
itself stays as it is.
"""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from . import qat
from .model import pixel_shuffle_dcr

MAX_COPIES = 4


def direct_path_tensors(model, upsampler: bool = False) -> dict[str, str]:
    """The simulated int8 tensors (core/qat.py names) that the copies split: the skip head conv's
    output, the tail conv's and their sum's, and with upsampler=True the upsampler's last conv
    output, by what the traced graph connects."""
    sim = qat.prepare(model)   # shares the model's parameters and leaves the model as it was
    modules = dict(sim.named_modules())

    def quant_after(node):
        users = [u for u in node.users if u.op == "call_module" and isinstance(modules[u.target], qat.ActQuant)]
        return users[0] if len(users) == 1 else None

    found = {}
    for node in sim.graph.nodes:
        if node.op == "call_module" and node.target in ("q_skip_head", "q_tail"):
            q = quant_after(node)
            if q is not None:
                found[node.target[2:]] = q
    if set(found) != {"skip_head", "tail"}:
        raise ValueError("staggered copies need a model with a skip head (core/equalize.py)")
    adds = [n for n in sim.graph.nodes if {found["skip_head"], found["tail"]} <= set(n.all_input_nodes)]
    total = quant_after(adds[0]) if len(adds) == 1 else None
    if total is None:
        raise ValueError("the skip sum (tail + skip head) was not found in the traced graph")
    out = {"skip": found["skip_head"].target, "tail": found["tail"].target, "sum": total.target}
    if upsampler:
        last = f"q_upsampler_convs_{len(model.upsampler.convs) - 1}"
        ups = [quant_after(n) for n in sim.graph.nodes if n.op == "call_module" and n.target == last]
        if len(ups) != 1 or ups[0] is None:
            raise ValueError("the upsampler's last conv output was not found in the traced graph")
        out["upsampler"] = ups[0].target
    return out


def _step(lo: float, hi: float) -> float:
    return qat.qparams(lo, hi)[0]


def _with_shift(r, d: float) -> list[float]:
    """Range r widened on both sides by |d|: what copies shifted by -d to +d span."""
    return [r[0] - abs(d), r[1] + abs(d)]


def _spread(r, copies: int, j: int = 0) -> float:
    """Half-spread of `copies` copies of a tensor with range r, neighbours (1/copies + j) steps apart,
    the step that of the range they widen (found by fixed-point iteration)."""
    half, d = (copies - 1) / 2, 0.0
    for _ in range(5):
        d = half * (1 / copies + j) * _step(*_with_shift(r, d))
    return d


def _shifts(ranges: dict, names: dict, copies: int, search: int = 3):
    """(half-spread of the skip head's copies, of the tail's, how far the sum's stagger misses).

    Neighbouring copies sit (1/copies + j) steps apart, j a whole number: a whole step more rounds
    alike. The sum's copies add the two inputs' shifts, so j for each input (|j| <= search) is chosen
    to put them 1/copies of the sum's own step apart too; each extra step widens a range by one
    level of 255. Steps are those of the widened ranges, found by fixed-point iteration."""
    half = (copies - 1) / 2   # the outermost copy, in spacings from the centre
    best = None
    for j_k, j_t in itertools.product(range(-search, search + 1), repeat=2):
        d_k, d_t = _spread(ranges[names["skip"]], copies, j_k), _spread(ranges[names["tail"]], copies, j_t)
        s_sum = _step(*_with_shift(ranges[names["sum"]], d_k + d_t))
        phase = ((d_k + d_t) / half / s_sum - 1 / copies) % 1.0
        miss = min(phase, 1.0 - phase)
        key = (round(miss, 3), abs(j_k) + abs(j_t))
        if best is None or key < best[0]:
            best = (key, d_k, d_t, miss)
    return best[1], best[2], best[3]


def _copied_outputs(conv: nn.Conv2d, copies: int, half_spread: float) -> nn.Conv2d:
    """conv with its outputs repeated `copies` times, copy i shifted by a constant (in its bias)."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels * copies, conv.kernel_size, conv.stride, conv.padding)
    shifts = torch.linspace(-half_spread, half_spread, copies) if copies > 1 else torch.zeros(1)
    with torch.no_grad():
        new.weight.copy_(torch.cat([conv.weight] * copies))
        new.bias.copy_(torch.cat([conv.bias + float(s) for s in shifts]))
    return new


def _averaged_inputs(conv: nn.Conv2d, copies: int) -> nn.Conv2d:
    """conv reading `copies` copies of its input and averaging them (weights / copies on each)."""
    new = nn.Conv2d(conv.in_channels * copies, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        new.weight.copy_(torch.cat([conv.weight / copies] * copies, dim=1))
        new.bias.copy_(conv.bias)
    return new


def _shuffle_labels(upsampler, channels: int) -> torch.Tensor:
    """(channels / s^2, s, s): which conv output channel the upsampler's last depth-to-space puts
    at each output channel and sub-pixel (its own order, crd or dcr)."""
    s = upsampler.factors[-1]
    labels = torch.arange(channels, dtype=torch.float64).reshape(1, channels, 1, 1)
    shuffle = F.pixel_shuffle if upsampler.order == "crd" else pixel_shuffle_dcr
    return shuffle(labels, s)[0].round().long()


def _copied_before_shuffle(conv: nn.Conv2d, upsampler, copies: int, half_spread: float) -> nn.Conv2d:
    """The upsampler's last conv with its outputs repeated `copies` times, laid out so that its
    depth-to-space gives the copies one after another (copy i: channels i*C .. i*C + C - 1)."""
    n = conv.out_channels
    old = _shuffle_labels(upsampler, n)              # (C, s, s)
    new_labels = _shuffle_labels(upsampler, n * copies)   # (copies * C, s, s)
    c = old.shape[0]
    new = nn.Conv2d(conv.in_channels, n * copies, conv.kernel_size, conv.stride, conv.padding)
    shifts = torch.linspace(-half_spread, half_spread, copies)
    with torch.no_grad():
        for i in range(copies):
            dst, src = new_labels[i * c:(i + 1) * c].flatten(), old.flatten()
            new.weight[dst] = conv.weight[src]
            new.bias[dst] = conv.bias[src] + float(shifts[i])
    return new


def stagger_direct_path(model, ranges: dict[str, list[float]], copies: int = 2, upsampler: bool = False):
    """(model with the direct path carried `copies` times, ranges for its int8 graph, a description).

    model: a DRSAN with a skip head (equalized); ranges: its QAT ranges (core/qat.py names), which
    the rewritten graph keeps except for the three split tensors, widened by their copies' shifts.
    With upsampler=True the upsampler's last conv output (before its depth-to-space) is carried
    `copies` times as well and the output conv averages them. That conv is the widest of the graph:
    with two copies the model has +33% multiply-adds at x2 (+13% without the upsampler's copies),
    +63% at x3 (+22%), +39% at x4 (+9%).
    The model is copied, not changed; with copies=1 it comes back as it is."""
    if not 1 <= copies <= MAX_COPIES:
        raise ValueError(f"copies must be 1 to {MAX_COPIES}, not {copies}")
    names = direct_path_tensors(model, upsampler)
    missing = [n for n in names.values() if n not in ranges]
    if missing:
        raise ValueError(f"the QAT ranges have no {missing[0]}: not ranges of this model's graph")
    if copies == 1:
        return model, dict(ranges), {"copies": 1}
    d_k, d_t, miss = _shifts(ranges, names, copies)
    out = copy.deepcopy(model)
    out.skip_head = _copied_outputs(model.skip_head, copies, d_k)
    out.tail = _copied_outputs(model.tail, copies, d_t)
    out.upsampler.convs[0] = _averaged_inputs(model.upsampler.convs[0], copies)
    new_ranges = dict(ranges)
    new_ranges[names["skip"]] = _with_shift(ranges[names["skip"]], d_k)
    new_ranges[names["tail"]] = _with_shift(ranges[names["tail"]], d_t)
    new_ranges[names["sum"]] = _with_shift(ranges[names["sum"]], d_k + d_t)
    split = [names["skip"], names["tail"], names["sum"]]
    about = {"copies": copies, "tensors": sorted(split),
             "shifts": {"skip_head": round(d_k, 6), "tail": round(d_t, 6)},
             "sum_stagger_error_steps": round(miss, 4)}
    if upsampler:
        d_u = _spread(ranges[names["upsampler"]], copies)
        last = len(out.upsampler.convs) - 1
        out.upsampler.convs[last] = _copied_before_shuffle(out.upsampler.convs[last], out.upsampler, copies, d_u)
        out.recon = _averaged_inputs(model.recon, copies)
        new_ranges[names["upsampler"]] = _with_shift(ranges[names["upsampler"]], d_u)
        about["tensors"] = sorted(split + [names["upsampler"]])
        about["upsampler"] = True
        about["shifts"]["upsampler"] = round(d_u, 6)
    return out, new_ranges, about

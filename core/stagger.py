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
itself stays as it is. Fine-tuning can see the copies' rounding too (core/train.py --stagger K,
through StaggeredSimulation), the checkpoint still the plain model.
"""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from . import qat
from .model import Concat, pixel_shuffle_dcr

MAX_COPIES = 4


def flags_problem(copies: int, upsampler: bool, concatenations: bool) -> str | None:
    """What a --stagger K [--stagger-upsampler] [--stagger-concat] request gets wrong, or None:
    the one check the converter, the trainer and eval/int8_budget.py make before any work."""
    if not 1 <= copies <= MAX_COPIES:
        return f"--stagger must be 1 to {MAX_COPIES}, not {copies}"
    for flag, on in (("--stagger-upsampler", upsampler), ("--stagger-concat", concatenations)):
        if on and copies == 1:
            return f"{flag} needs --stagger K (2 or more copies)"
    return None


def flags(copies: int, upsampler: bool = False, concatenations: bool = False) -> str:
    """The command-line spelling of a staggered graph, for messages and logs."""
    if copies == 1:
        return "the plain graph (no --stagger)"
    return (f"--stagger {copies}" + (" --stagger-upsampler" if upsampler else "")
            + (" --stagger-concat" if concatenations else ""))


def direct_path_tensors(model, upsampler: bool = False, sim=None) -> dict[str, str]:
    """The simulated int8 tensors (core/qat.py names) that the copies split: the skip head conv's
    output, the tail conv's and their sum's, and with upsampler=True the upsampler's last conv
    output, by what the traced graph connects. sim: model's qat.prepare, if already made."""
    if sim is None:
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


def concatenation_tensors(model, sim=None) -> dict[int, str]:
    """{DRAG index: the simulated int8 tensor (core/qat.py name) of its concatenation, the input of
    its 1x1 fuse conv}, by what the traced graph connects. sim: model's qat.prepare, if already made."""
    if sim is None:
        sim = qat.prepare(model)
    modules = dict(sim.named_modules())
    found = {}
    for node in sim.graph.nodes:
        if node.op == "call_function" and node.target is torch.cat:
            quant = next(iter(node.users))
            fuse = [u.target for u in quant.users if u.op == "call_module"]
            for i in range(len(model.body)):
                if fuse == [f"q_body_{i}_fuse"] and isinstance(modules[quant.target], qat.ActQuant):
                    found[i] = quant.target
    if sorted(found) != list(range(len(model.body))):
        raise ValueError("a DRAG's concatenation was not found in the traced graph")
    return found


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


def _copied_outputs(copies: int, half_spread: float):
    """(weight, bias) -> the same conv's with its outputs repeated `copies` times, copy i shifted by a
    constant (in its bias)."""
    shifts = [float(s) for s in torch.linspace(-half_spread, half_spread, copies)] if copies > 1 else [0.0]

    def rewrite(w, b):
        return torch.cat([w] * copies), torch.cat([b + s for s in shifts])
    return rewrite


def _averaged_inputs(copies: int):
    """(weight, bias) -> a conv's reading `copies` copies of its input and averaging them."""
    def rewrite(w, b):
        return torch.cat([w / copies] * copies, dim=1), b
    return rewrite


def _averaged_chunks(copies: int, chunk: int):
    """(weight, bias) -> a conv's reading each `chunk` channels of its input as `copies` copies one
    after another (core.model.Concat's order with shifts) and averaging them."""
    def rewrite(w, b):
        out, inputs = w.shape[:2]
        parts = w.reshape(out, inputs // chunk, 1, chunk, *w.shape[2:]) / copies
        return parts.expand(-1, -1, copies, *parts.shape[3:]).reshape(out, inputs * copies, *w.shape[2:]), b
    return rewrite


def _shuffle_labels(upsampler, channels: int) -> torch.Tensor:
    """(channels / s^2, s, s): which conv output channel the upsampler's last depth-to-space puts
    at each output channel and sub-pixel (its own order, crd or dcr)."""
    s = upsampler.factors[-1]
    labels = torch.arange(channels, dtype=torch.float64).reshape(1, channels, 1, 1)
    shuffle = F.pixel_shuffle if upsampler.order == "crd" else pixel_shuffle_dcr
    return shuffle(labels, s)[0].round().long()


def _copied_before_shuffle(upsampler, channels: int, copies: int, half_spread: float):
    """(weight, bias) -> the upsampler's last conv's with its `channels` outputs repeated `copies`
    times, laid out so that its depth-to-space gives the copies one after another (copy i: channels
    i*C .. i*C + C - 1)."""
    old = _shuffle_labels(upsampler, channels)                 # (C, s, s)
    new_labels = _shuffle_labels(upsampler, channels * copies)   # (copies * C, s, s)
    c = old.shape[0]
    source = torch.empty(channels * copies, dtype=torch.long)   # the old channel behind each new one
    shift = torch.empty(channels * copies)
    for i, s in enumerate(torch.linspace(-half_spread, half_spread, copies)):
        source[new_labels[i * c:(i + 1) * c].flatten()] = old.flatten()
        shift[new_labels[i * c:(i + 1) * c].flatten()] = float(s)

    def rewrite(w, b):
        return w[source.to(w.device)], b[source.to(b.device)] + shift.to(b)
    return rewrite


def _rewrites(model, ranges: dict, names: dict, copies: int, upsampler: bool, concats: dict | None = None,
              tied: dict | None = None):
    """([(conv path, rewrite of its (weight, bias)), ...] in the order they apply, the ranges of the
    rewritten int8 graph, a description). A path may be rewritten twice (x2: the upsampler's only
    conv reads the tail's copies and writes its own). concats: {DRAG index: its concatenation's
    tensor name}, every DRAG, to carry `copies` times as well; their shifts go in the description
    ("concat_shifts", in DRAG order) for the model's Concat modules. tied: qat.tied_inputs of the
    model's simulation (the concatenations' inputs take their widened range)."""
    d_k, d_t, miss = _shifts(ranges, names, copies)
    steps = [("skip_head", _copied_outputs(copies, d_k)), ("tail", _copied_outputs(copies, d_t)),
             ("upsampler.convs.0", _averaged_inputs(copies))]
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
        last = len(model.upsampler.convs) - 1
        steps += [(f"upsampler.convs.{last}",
                   _copied_before_shuffle(model.upsampler, model.upsampler.convs[last].out_channels, copies, d_u)),
                  ("recon", _averaged_inputs(copies))]
        new_ranges[names["upsampler"]] = _with_shift(ranges[names["upsampler"]], d_u)
        about["tensors"] = sorted(split + [names["upsampler"]])
        about["upsampler"] = True
        about["shifts"]["upsampler"] = round(d_u, 6)
    if concats:
        about["concat_shifts"], about["shifts"]["concatenations"] = [], {}
        for i, name in sorted(concats.items()):
            d_c = _spread(ranges[name], copies)
            widened = _with_shift(ranges[name], d_c)
            for tensor in [name] + [t for t, owner in (tied or {}).items() if owner == name and t in ranges]:
                new_ranges[tensor] = widened
            steps.append((f"body.{i}.fuse", _averaged_chunks(copies, model.body[i].fuse.in_channels
                                                             // (model.body[i].n_blocks + 1))))
            about["concat_shifts"].append([float(v) for v in torch.linspace(-d_c, d_c, copies)])
            about["shifts"]["concatenations"][name] = round(about["concat_shifts"][-1][-1], 6)
        about["concatenations"] = sorted(concats.values())
    return steps, new_ranges, about


def _rewritten_params(model, steps) -> dict[str, torch.Tensor]:
    """{conv path + '.weight' / '.bias': tensor} after the rewrites, differentiable in the model's
    parameters."""
    own = dict(model.named_parameters())
    convs = {}
    for path, rewrite in steps:
        convs[path] = rewrite(*convs.get(path, (own[f"{path}.weight"], own[f"{path}.bias"])))
    return {f"{path}.{kind}": t for path, (w, b) in convs.items() for kind, t in zip(("weight", "bias"), (w, b))}


def _set_conv(model, path: str, weight: torch.Tensor, bias: torch.Tensor):
    """Replace the conv at `path` by one of the same geometry holding these weights."""
    parent, _, name = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, name)
    new = nn.Conv2d(weight.shape[1], weight.shape[0], old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    if isinstance(owner, nn.ModuleList):
        owner[int(name)] = new
    else:
        setattr(owner, name, new)


def _rewritten_model(model, steps, share_parameters: bool = False, concat_shifts: list | None = None):
    """A copy of model with the rewritten convs (and staggered concatenations: each DRAG's shifts,
    in order); with share_parameters, the copy shares every parameter the rewrites leave alone."""
    out = copy.deepcopy(model, memo={id(p): p for p in model.parameters()} if share_parameters else None)
    with torch.no_grad():
        rewritten = _rewritten_params(model, steps)
    for path in dict(steps):
        _set_conv(out, path, rewritten[f"{path}.weight"], rewritten[f"{path}.bias"])
    for i, shifts in enumerate(concat_shifts or []):
        out.body[i].concat = Concat(shifts)
    return out


def _with_ranges(names: dict, ranges: dict) -> dict:
    """names, each of its tensors required in ranges."""
    missing = [n for n in names.values() if n not in ranges]
    if missing:
        raise ValueError(f"the QAT ranges have no {missing[0]}: not ranges of this model's graph")
    return names


def _found_tensors(model, ranges: dict, upsampler: bool, concatenations: bool, sim=None):
    """(direct_path_tensors, concatenation_tensors or None, qat.tied_inputs) of one trace of the
    model (sim, its qat.prepare, if already made), each tensor required in ranges."""
    if sim is None:
        sim = qat.prepare(model)
    names = _with_ranges(direct_path_tensors(model, upsampler, sim), ranges)
    concats = _with_ranges(concatenation_tensors(model, sim), ranges) if concatenations else None
    return names, concats, qat.tied_inputs(sim)


def stagger_direct_path(model, ranges: dict[str, list[float]], copies: int = 2, upsampler: bool = False,
                        concatenations: bool = False):
    """(model with the direct path carried `copies` times, ranges for its int8 graph, a description).

    model: a DRSAN with a skip head (equalized); ranges: its QAT ranges (core/qat.py names), which
    the rewritten graph keeps except for the three split tensors, widened by their copies' shifts.
    With upsampler=True the upsampler's last conv output (before its depth-to-space) is carried
    `copies` times as well and the output conv averages them. That conv is the widest of the graph:
    with two copies the model has +33% multiply-adds at x2 (+13% without the upsampler's copies),
    +63% at x3 (+22%), +39% at x4 (+9%).
    With concatenations=True each DRAG's concatenation (the input of its 1x1 fuse conv) is carried
    `copies` times too: the export's requantizing identity convs write the shifted copies (their
    shifts in their biases) and the fuse conv averages them (core.model.Concat with shifts).
    The model is copied, not changed; with copies=1 it comes back as it is."""
    if not 1 <= copies <= MAX_COPIES:
        raise ValueError(f"copies must be 1 to {MAX_COPIES}, not {copies}")
    names, concats, tied = _found_tensors(model, ranges, upsampler, concatenations)
    if copies == 1:
        return model, dict(ranges), {"copies": 1}
    steps, new_ranges, about = _rewrites(model, ranges, names, copies, upsampler, concats, tied)
    return _rewritten_model(model, steps, concat_shifts=about.get("concat_shifts")), new_ranges, about


class StaggeredSimulation(nn.Module):
    """The int8 simulation of the staggered graph, trainable through the plain model's parameters.

    Quantization-aware training on the graph that --stagger ships: the loss sees the copies'
    rounding, and its gradients reach the unstaggered checkpoint's weights (each rewritten conv is
    computed from the model's own conv at every step, so a bias moves all its copies alike) and its
    ranges (every tensor but the split ones rounds on `scored`'s range objects, learned or tracked).
    The split tensors' ranges must stay as they are: the copies' shifts follow from them. So the
    checkpoint that training writes converts (converters/to_tflite.py --qat --stagger K) to exactly
    the graph that was trained.

    model: the DRSAN being trained; scored: its int8 simulation (core/qat.prepare) with the ranges
    loaded; concatenations: each DRAG's concatenation carried `copies` times too (their ranges held
    as well)."""

    def __init__(self, model, scored, copies: int, upsampler: bool = False, concatenations: bool = False):
        super().__init__()
        if not 2 <= copies <= MAX_COPIES:
            raise ValueError(f"copies must be 2 to {MAX_COPIES}, not {copies}")
        ranges = qat.ranges(scored)
        names, concats, tied = _found_tensors(model, ranges, upsampler, concatenations, sim=scored)
        self.steps, new_ranges, self.about = _rewrites(model, ranges, names, copies, upsampler, concats, tied)
        self.split = self.about["tensors"] + self.about.get("concatenations", [])
        staggered = _rewritten_model(model, self.steps, share_parameters=True,
                                     concat_shifts=self.about.get("concat_shifts"))
        self.sim = qat.prepare(staggered).to(next(model.parameters()).device)
        qat.load_ranges(self.sim, new_ranges, frozen=True)
        self._share_ranges(scored, set(self.split))
        self.__dict__["model"] = model   # not a submodule: its parameters belong to the model

    def _share_ranges(self, scored, split: set[str]):
        """Round every tensor but the split ones on scored's range objects."""
        own = qat.act_quants(scored)
        tied = qat.tied_inputs(self.sim)
        for name in qat.act_quants(self.sim):
            if name not in split:
                parent, _, leaf = name.rpartition(".")
                setattr(self.sim.get_submodule(parent) if parent else self.sim, leaf, own[name])
        for name, m in self.sim.named_modules():
            if isinstance(m, qat.TiedQuant) and tied[name] not in split:
                m.__dict__["owner"] = scored.get_submodule(name).owner

    def forward(self, x):
        return torch.func.functional_call(self.sim, _rewritten_params(self.model, self.steps), (x,))

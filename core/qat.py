"""Quantization-aware fine-tuning: the full-integer TFLite graph simulated in PyTorch.

`prepare(model)` traces a DRSAN with torch.fx and returns a module that computes what
the int8 TFLite artifact computes (converters/to_tflite.py, PReLU spelled "sub"):

- every convolution's weights are rounded per output channel to int8, symmetric, with
  the scale max|w| / 127 that the TFLite converter derives from the same weights;
- every tensor the int8 graph stores is rounded to int8 with a per-tensor affine
  range: the input, each convolution output (after its ReLU where TFLite fuses one),
  each PReLU's parts (relu(x), x - relu(x), slope * that, their sum), the DRA products
  and sums, the global-average-pooled coefficients, the concatenation, the global
  residual sum; the sigmoid gate has TFLite's fixed range [0, 1) in steps of 1/256;
- each concatenation input is requantized to the concatenation's range on its way in
  (the export's identity 1x1 conv), and keeps its own range for its other uses;
- the output image has the fixed range [0, 1], whose int8 grid is the 8-bit levels k/255;
- reshapes, slices, depth-to-space and the output's min(., 1) keep their input's
  range, as they do in TFLite.

Ranges are tracked: an exponential moving average of each tensor's batch min/max
while the model trains, frozen with `freeze_ranges` for the last part of fine-tuning.
Or, after `learn_ranges`, they are learned: each range's width and centre become
parameters that the loss trains through the rounding (in the manner of LSQ), starting
from the ranges the tensors have.
Gradients pass the rounding straight through (torch's fake-quantize ops).
The returned module shares the model's parameters: the optimizer, checkpoints and
every loader keep seeing a plain DRSAN; the ranges travel in the checkpoint's
metadata (`ranges()` / `load_ranges()`), and converters/to_tflite.py --qat writes
them into the int8 artifact instead of calibrating.
"""
from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

QMIN, QMAX = -128, 127
W_QMAX = 127
SIGMOID_SCALE, SIGMOID_ZERO_POINT = 1.0 / 256.0, -128   # TFLite's fixed int8 LOGISTIC output
IMAGE_RANGE = (0.0, 1.0)


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 rounding of a conv weight, as the TFLite converter does it."""
    scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / W_QMAX).clamp(min=1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -W_QMAX, W_QMAX)


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """int8 scale and zero point of a range, nudged so that 0 is exact (TFLite's rule)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (QMAX - QMIN), 1e-8)
    zero = int(min(QMAX, max(QMIN, round(QMIN - lo / scale))))
    return scale, zero


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    """Rounding whose gradient is the identity (straight through)."""
    return t + (t.round() - t).detach()


def fake_quantize_learnable(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """int8 rounding of x on the range [lo, hi], differentiable in lo and hi as well as in x.

    The same grid as `qparams` and torch's fake-quantize (0 exact, the zero point a whole number),
    so the range that ships gives the TFLite file the rounding that was trained."""
    # scale and zero point in double, the rounding in float32: as qparams and torch's op do it, so that
    # ties (common in flat image regions) round alike
    lo, hi = lo.double().clamp(max=0.0), hi.double().clamp(min=0.0)
    scale = ((hi - lo) / (QMAX - QMIN)).clamp(min=1e-8)
    zero = _round_ste(QMIN - lo / scale).clamp(QMIN, QMAX).float()
    scale = scale.float()
    q = (_round_ste(x * (1.0 / scale)) + zero).clamp(QMIN, QMAX)
    return (q - zero) * scale


def _widened(record, x):
    """(min, max) so far, widened by tensor x: the global range "record" mode collects."""
    lo, hi = float(x.detach().amin()), float(x.detach().amax())
    return (lo, hi) if record is None else (min(lo, record[0]), max(hi, record[1]))


class ActQuant(nn.Module):
    """One int8 activation tensor: tracks its range while training, rounds to it.

    Modes: "quantize" (the default), "record" (float pass-through that records the
    global min/max of what it sees: converters use it to find this tensor in the
    TFLite graph), "off" (float pass-through).
    """

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.mode = "quantize"
        self.record = None
        self.learned = False

    def forward(self, x):
        if self.mode == "off":
            return x
        if self.mode == "record":
            self.record = _widened(self.record, x)
            return x
        if self.training and not bool(self.frozen) and not self.learned:
            self._track(x.detach())
        return self.quantize(x)

    def quantize(self, x):
        """x rounded to this tensor's int8 range (also used for the inputs requantized to it)."""
        if self.learned and self.log_width.requires_grad:
            lo, hi = self.learned_bounds()
            return fake_quantize_learnable(x, lo, hi)
        scale, zero = qparams(float(self.lo), float(self.hi))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, QMIN, QMAX)

    def learn(self):
        """Make the range trainable: width anchor * exp(log_width), centre anchor + shift * anchor width."""
        self.register_buffer("anchor", torch.stack([self.lo, self.hi]).detach().clone())
        self.log_width = nn.Parameter(torch.zeros((), device=self.lo.device))
        self.shift = nn.Parameter(torch.zeros((), device=self.lo.device))
        self.learned = True

    def learned_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo0, hi0 = self.anchor[0], self.anchor[1]
        width0 = (hi0 - lo0).clamp(min=1e-8)
        # written as offsets from the anchor, so that zero parameters give the anchor exactly
        move, grow = self.shift * width0, torch.expm1(self.log_width) * width0 / 2
        return lo0 + move - grow, hi0 + move + grow

    def freeze(self):
        """Stop tracking or learning: the range stays what lo/hi now hold."""
        self.sync()
        self.frozen.fill_(True)
        if self.learned:
            self.log_width.requires_grad_(False)
            self.shift.requires_grad_(False)

    @torch.no_grad()
    def sync(self):
        """Write a learned range into lo/hi, where exports and checkpoints read it."""
        if self.learned:
            lo, hi = self.learned_bounds()
            self.lo.copy_(lo)
            self.hi.copy_(hi)

    @torch.no_grad()
    def _track(self, x):
        lo, hi = x.amin().float(), x.amax().float()
        if not bool(self.seen):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        else:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)


class ImageQuant(ActQuant):
    """The output image, on the fixed range [0, 1]: scale 1/255 and zero point -128, the
    8-bit image's levels k/255. The int8 artifact stores it so (min(., 1) keeps one scale
    for its input and output, and the converter gives it the output's [0, 1]); a tracked
    range (about [0, 1.1]) would simulate a grid the artifact never uses."""

    def __init__(self):
        super().__init__()
        self.fix()

    def fix(self):
        self.lo.fill_(IMAGE_RANGE[0])
        self.hi.fill_(IMAGE_RANGE[1])
        self.seen.fill_(True)
        self.frozen.fill_(True)


class TiedQuant(nn.Module):
    """A requantization to another tensor's int8 range: TFLite's CONCATENATION stores every
    input on its output's grid, so each input is rounded again to that range on its way in.
    Until the owner has seen data (the first batch) the tensor passes through in float.
    With shifts (a staggered concatenation, core/stagger.py) the input is written once per
    shift, shifted before it is rounded, as the export's identity conv does it with a bias."""

    def __init__(self, owner: ActQuant, shifts: tuple[float, ...] = ()):
        super().__init__()
        self.__dict__["owner"] = owner   # not a submodule: the owner's buffers are saved once
        self.shifts = tuple(shifts)
        self.mode = "quantize"
        self.record = None

    def forward(self, x):
        if self.shifts:
            x = torch.cat([x + s for s in self.shifts], dim=1)
        if self.mode == "record":
            self.record = _widened(self.record, x)
            return x
        if self.mode == "off" or not bool(self.owner.seen):
            return x
        return self.owner.quantize(x)


class SigmoidQuant(nn.Module):
    """The sigmoid gate's output on TFLite's fixed int8 grid."""

    def __init__(self):
        super().__init__()
        self.mode = "quantize"

    def forward(self, x):
        if self.mode != "quantize":
            return x
        return torch.fake_quantize_per_tensor_affine(x, SIGMOID_SCALE, SIGMOID_ZERO_POINT, QMIN, QMAX)


class QuantConv(nn.Module):
    """A conv with int8 weights; it holds the model's own conv, so the parameters stay shared."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.mode = "quantize"

    def forward(self, x):
        c = self.conv
        w = quantize_weight(c.weight) if self.mode == "quantize" else c.weight
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


class QuantPReLU(nn.Module):
    """PReLU as the int8 export spells it: relu(x) + a * (x - relu(x)), each part an int8 tensor.

    The slopes sit in a depthwise conv there, one weight per channel, which int8 per-channel
    rounding represents exactly; so only the activations are rounded here.
    """

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.prelu = prelu
        self.q_pos, self.q_diff, self.q_neg, self.q_out = ActQuant(), ActQuant(), ActQuant(), ActQuant()

    def forward(self, x):
        pos = self.q_pos(torch.relu(x))
        neg = self.q_neg(self.q_diff(x - pos) * self.prelu.weight.view(1, -1, 1, 1))
        return self.q_out(pos + neg)


# ops whose int8 output gets a range of its own; everything else (views, slices,
# depth-to-space, min) keeps its input's, as TFLite requires for those ops
_RANGED_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, torch.cat,
                     torch.relu, F.relu}
_RANGED_METHODS = {"mean", "relu", "add", "sub", "mul"}
_RELUS = {torch.relu, F.relu, "relu"}


def _is_relu(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in _RELUS


def _is_image_output(node: torch.fx.Node) -> bool:
    """The last ReLU, whose only use is the min(., 1) that the graph returns."""
    users = list(node.users)
    return (_is_relu(node) and len(users) == 1 and users[0].op == "call_method" and users[0].target == "clamp"
            and all(u.op == "output" for u in users[0].users))


def _output_kind(node: torch.fx.Node, modules: dict) -> str | None:
    """'act', 'image', 'sigmoid' or None: how the int8 graph stores this node's output."""
    if node.op == "placeholder":   # the image; not the optional DRA coefficients
        return "act" if node.target == "x" else None
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, QuantConv):
            # TFLite fuses a following ReLU into the conv: then only the ReLU's output is stored
            return None if node.users and all(_is_relu(u) for u in node.users) else "act"
        return None   # QuantPReLU ranges its own parts
    if node.op == "call_function" and node.target is torch.sigmoid:
        return "sigmoid"
    if _is_image_output(node):
        return "image"
    if node.op == "call_function" and node.target in _RANGED_FUNCTIONS:
        return "act"
    if node.op == "call_method" and node.target in _RANGED_METHODS:
        return "act"
    return None


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, but a concatenation (core.model.Concat) is traced as one torch.cat of its
    inputs whatever its shifts: a staggered concatenation's shifts belong to the requantization of
    its inputs (TiedQuant), before they are rounded, and the graph keeps the plain model's node
    names, which the ranges are saved under."""

    def call_module(self, m, forward, args, kwargs):
        from .model import Concat

        if isinstance(m, Concat):
            out = torch.cat(args[0], dim=1)
            out.node.meta["concat_shifts"] = m.shifts
            return out
        return super().call_module(m, forward, args, kwargs)


def prepare(model) -> torch.fx.GraphModule:
    """The int8 simulation of `model` (a DRSAN), sharing its parameters; output clamped to [0, 1]."""
    clamp = model.clamp
    model.clamp = True   # the deployed graph's relu + min(., 1), traced in
    try:
        tracer = _Tracer()
        graph = tracer.trace(model, concrete_args={"coeffs": None})
        gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    finally:
        model.clamp = clamp
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            mod = modules[node.target]
            wrapped = QuantConv(mod) if isinstance(mod, nn.Conv2d) else (
                QuantPReLU(mod) if isinstance(mod, nn.PReLU) else None)
            if wrapped is not None:
                name = "q_" + node.target.replace(".", "_")
                gm.add_submodule(name, wrapped)
                node.target = name
    modules = dict(gm.named_modules())
    for i, node in enumerate(list(gm.graph.nodes)):
        kind = _output_kind(node, modules)
        if kind is None:
            continue
        name = f"aq_{i:03d}_{node.name}"
        gm.add_submodule(name, {"act": ActQuant, "image": ImageQuant, "sigmoid": SigmoidQuant}[kind]())
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    _tie_concatenation_inputs(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _tie_concatenation_inputs(gm: torch.fx.GraphModule):
    """Each concatenation input, on its way into the concatenation only, is requantized to the
    concatenation's range (the export's identity 1x1 conv, converters/export.py); its other
    uses keep the tensor's own range."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and node.target is torch.cat):
            continue
        owner_name = next(iter(node.users)).target
        inputs = []
        for j, src in enumerate(node.args[0]):
            if src.op == "call_module" and isinstance(modules[src.target], ActQuant):
                name = f"{owner_name}_in{j}"
                gm.add_submodule(name, TiedQuant(modules[owner_name], node.meta.get("concat_shifts", ())))
                with gm.graph.inserting_before(node):
                    src = gm.graph.call_module(name, (src,))
            inputs.append(src)
        node.args = (inputs,) + tuple(node.args[1:])


def act_quants(gm: nn.Module) -> dict[str, ActQuant]:
    """The tensors with a range of their own."""
    return {name: m for name, m in gm.named_modules() if isinstance(m, ActQuant)}


def tied_inputs(gm: nn.Module) -> dict[str, str]:
    """{requantized concatenation input: the name of the concatenation whose range it rounds on}."""
    names = {id(m): name for name, m in act_quants(gm).items()}
    return {name: names[id(m.owner)] for name, m in gm.named_modules() if isinstance(m, TiedQuant)}


def set_mode(gm: nn.Module, mode: str):
    """"quantize" (int8 weights and activations), "record" or "off" (float throughout; see ActQuant)."""
    for m in gm.modules():
        if isinstance(m, (ActQuant, TiedQuant)):
            m.mode, m.record = mode, None
        elif isinstance(m, (QuantConv, SigmoidQuant)):
            m.mode = mode


def learnable_quants(gm: nn.Module) -> dict[str, ActQuant]:
    """The ranges `learn_ranges` can train: all but the output image's fixed one."""
    return {name: m for name, m in act_quants(gm).items() if not isinstance(m, ImageQuant)}


def learn_ranges(gm: nn.Module) -> list[nn.Parameter]:
    """Turn every range (already tracked or loaded) into trainable parameters; returns them for an
    optimizer. They start at the current ranges (log_width = shift = 0)."""
    quants = learnable_quants(gm)
    unseen = [name for name, m in quants.items() if not bool(m.seen) and not m.learned]
    if unseen:
        raise ValueError(f"learned ranges start from existing ones; {len(unseen)} tensors have none "
                         f"(e.g. {unseen[0]}): start from a QAT checkpoint")
    params = []
    for m in quants.values():
        if not m.learned:   # a resumed run's are restored by load_range_state
            m.learn()
        params += [m.log_width, m.shift]
    return params


def sync_ranges(gm: nn.Module):
    for m in act_quants(gm).values():
        m.sync()


def freeze_ranges(gm: nn.Module):
    for m in act_quants(gm).values():
        m.freeze()


def is_frozen(gm: nn.Module) -> bool:
    return all(bool(m.frozen) for m in act_quants(gm).values())


def ranges(gm: nn.Module) -> dict[str, list[float]]:
    """Every tracked range, by the tensor's name in the simulation: what checkpoints carry.
    The requantized concatenation inputs (`<concatenation>_in<j>`) carry the concatenation's range."""
    sync_ranges(gm)
    out = {}
    for name, m in gm.named_modules():
        owner = m.owner if isinstance(m, TiedQuant) else m if isinstance(m, ActQuant) else None
        if owner is not None and bool(owner.seen):
            out[name] = [float(owner.lo), float(owner.hi)]
    return out


def load_ranges(gm: nn.Module, saved: dict[str, list[float]], frozen: bool = True):
    """Set the ranges from a checkpoint's; a name this graph does not have (other code) is an error."""
    quants = act_quants(gm)
    tied = {name for name, m in gm.named_modules() if isinstance(m, TiedQuant)}
    unknown = sorted(set(saved) - set(quants) - tied)
    missing = sorted(set(quants) - set(saved))
    if unknown or missing:
        raise ValueError(f"QAT ranges do not fit this model's graph ({len(unknown)} unknown, "
                         f"{len(missing)} missing, e.g. {(unknown or missing)[0]})")
    for name, (lo, hi) in saved.items():
        if name in tied:
            continue   # the owner's range is the one that counts
        m = quants[name]
        m.lo.fill_(lo)
        m.hi.fill_(hi)
        m.seen.fill_(True)
        m.frozen.fill_(frozen)
    _fix_image_range(gm)


def _fix_image_range(gm: nn.Module):
    """Checkpoints from before the image range was fixed carry a tracked one: it does not count."""
    for m in gm.modules():
        if isinstance(m, ImageQuant):
            m.fix()


@torch.no_grad()
def recorded_ranges(gm: nn.Module, inputs) -> dict[str, tuple[float, float]]:
    """Float min/max of every simulated int8 tensor over `inputs` (N, 3, H, W): the float model's,
    with no rounding of weights or activations, as TFLite's calibration sees it."""
    was_training = gm.training
    gm.eval()
    set_mode(gm, "record")
    try:
        for x in inputs:
            gm(x[None] if x.dim() == 3 else x)
        return {name: m.record for name, m in gm.named_modules() if isinstance(m, (ActQuant, TiedQuant))}
    finally:
        set_mode(gm, "quantize")
        gm.train(was_training)


_LEARNED_STATE = ("anchor", "log_width", "shift")


def range_state(gm: nn.Module) -> dict[str, torch.Tensor]:
    """Every range's buffers (tracked or not, frozen or not) and learned parameters: what a resume
    state keeps."""
    sync_ranges(gm)
    return {f"{name}.{b}": getattr(m, b).detach().clone() for name, m in act_quants(gm).items()
            for b in ("lo", "hi", "seen", "frozen") + (_LEARNED_STATE if m.learned else ())}


def load_range_state(gm: nn.Module, state: dict[str, torch.Tensor]):
    """Restore `range_state`, learned ranges as learned ones."""
    quants = act_quants(gm)
    with torch.no_grad():
        for key, value in state.items():
            name, buf = key.rsplit(".", 1)
            if buf in _LEARNED_STATE and not quants[name].learned:
                quants[name].learn()
            getattr(quants[name], buf).copy_(value)
    for m in quants.values():
        if m.learned and bool(m.frozen):
            m.freeze()
    _fix_image_range(gm)

"""DRSAN as its authors implemented it (see docs/model.md), one definition for all variants.

`build_model("32s", scale=4)` builds any variant from the registry in core/variants.py.
The DRA coefficients stay reachable: `DRAG.coefficients(x)` returns the per-image
vector r, and every DRAG (and the whole model) accepts r from outside, which
tiling and quantization work need.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .variants import Variant, check_scale, get_variant


def _prelu(channels: int) -> nn.PReLU:
    # The authors initialise PReLU slopes to 0 (a ReLU at the start of training).
    return nn.PReLU(channels, init=0.0)


class ResidualBlock(nn.Module):
    """Pre-activation block: PReLU -> conv3x3 -> PReLU -> conv3x3 (no skip: DRA adds it)."""

    def __init__(self, c: int):
        super().__init__()
        self.act1 = _prelu(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act2 = _prelu(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act2(self.conv1(self.act1(x))))


class Concat(nn.Module):
    """Channel concatenation, a module of its own so that an export can replace it (the int8
    export puts each input on the concatenation's grid through a requantizing op, see
    converters/export.py) without touching DRAG's forward.

    shifts (empty for the model as trained): each input carried once per shift, shifted by it, in
    the order input 0 + shifts[0], input 0 + shifts[1], ..., input 1 + shifts[0], ...: the
    staggered copies of core/stagger.py, whose fuse conv averages them."""

    def __init__(self, shifts: tuple[float, ...] = ()):
        super().__init__()
        self.shifts = tuple(float(s) for s in shifts)

    def forward(self, feats):
        if not self.shifts:
            return torch.cat(feats, dim=1)
        return torch.cat([f + s for f in feats for s in self.shifts], dim=1)


class DRAG(nn.Module):
    """Dynamic residual attention group: N blocks whose skips are weighted by r."""

    def __init__(self, c: int, n_blocks: int):
        super().__init__()
        self.n_blocks = n_blocks
        self.n_coeffs = n_blocks * (n_blocks + 1) // 2
        self.drm_conv1 = nn.Conv2d(c, 16, 1)
        self.drm_act = _prelu(16)
        self.drm_conv2 = nn.Conv2d(16, self.n_coeffs, 1)
        self.blocks = nn.ModuleList(ResidualBlock(c) for _ in range(n_blocks))
        self.concat = Concat()
        self.fuse = nn.Conv2d(c * (n_blocks + 1), c, 1)

    def drm_features(self, x):
        """The DRM up to its global pooling; r is the spatial mean of conv2 of this."""
        return self.drm_act(self.drm_conv1(x))

    def coefficients(self, x):
        """r for each image: shape (B, N(N+1)/2), ordered r_0^1, r_0^2, r_1^2, r_0^3, ..."""
        return self.drm_conv2(self.drm_features(x)).mean(dim=(2, 3))

    def forward(self, x, r=None):
        if r is None:
            r = self.coefficients(x)
        r = r[:, :, None, None]
        feats = [x]
        k = 0
        for n, block in enumerate(self.blocks, start=1):
            y = block(feats[-1])
            acc = y
            for j in range(n):
                acc = acc + r[:, k : k + 1] * feats[j]
                k += 1
            feats.append(acc * torch.sigmoid(y))
        return self.fuse(self.concat(feats))


def _dcr_eager(x, s: int):
    b, c, h, w = x.shape
    c_out = c // (s * s)
    x = x.reshape(b, s, s, c_out, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c_out, h * s, w * s)


class _DepthToSpaceDCR(torch.autograd.Function):
    """Exports as one ONNX DepthToSpace(mode=DCR) node instead of reshape/transpose."""

    @staticmethod
    def forward(ctx, x, s):
        return _dcr_eager(x, s)

    @staticmethod
    def symbolic(g, x, s):
        return g.op("DepthToSpace", x, blocksize_i=s, mode_s="DCR")


def pixel_shuffle_dcr(x, s: int):
    """Depth-to-space in TensorFlow's DCR channel order (TFLite's native DEPTH_TO_SPACE)."""
    if torch.onnx.is_in_onnx_export():
        return _DepthToSpaceDCR.apply(x, s)
    return _dcr_eager(x, s)


class Upsampler(nn.Module):
    """ESPCN upsampling: x2/x3 one conv + shuffle, x4 two (conv + shuffle x2)."""

    def __init__(self, c: int, scale: int, order: str = "crd"):
        super().__init__()
        steps = [2, 2] if scale == 4 else [scale]
        self.factors = steps
        self.convs = nn.ModuleList(nn.Conv2d(c, c * s * s, 3, padding=1) for s in steps)
        self.order = order

    def forward(self, x):
        for conv, s in zip(self.convs, self.factors):
            x = conv(x)
            x = F.pixel_shuffle(x, s) if self.order == "crd" else pixel_shuffle_dcr(x, s)
        return x


class DRSAN(nn.Module):
    def __init__(self, variant: Variant, scale: int, upsample_order: str = "crd", clamp: bool = False,
                 skip_head: bool = False):
        super().__init__()
        if upsample_order not in ("crd", "dcr"):
            raise ValueError(f"upsample_order must be 'crd' or 'dcr', not {upsample_order!r}")
        self.variant, self.scale, self.clamp = variant, check_scale(scale), clamp
        c = variant.channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.ModuleList(DRAG(c, variant.blocks) for _ in range(variant.drags))
        self.tail = nn.Conv2d(c, c, 3, padding=1)
        self.upsampler = Upsampler(c, scale, upsample_order)
        self.recon = nn.Conv2d(c, 3, 3, padding=1)
        # A second head conv for the global skip only (None: the skip carries the head's own
        # features). int8 builds use it to rescale the skip path's channels, which DRAG 0's
        # sigmoid gate does not allow on the head's features (core/equalize.py).
        self.skip_head = nn.Conv2d(3, c, 3, padding=1) if skip_head else None

    @property
    def upsample_order(self) -> str:
        return self.upsampler.order

    def forward(self, x, coeffs=None):
        """x: (B, 3, H, W) RGB in [0, 1]. coeffs: optional list of K tensors (B, N(N+1)/2)."""
        x0 = self.head(x)
        f = x0
        for i, drag in enumerate(self.body):
            f = drag(f, None if coeffs is None else coeffs[i])
        skip = x0 if self.skip_head is None else self.skip_head(x)
        out = self.recon(self.upsampler(self.tail(f) + skip))
        if not self.clamp:
            return out
        # relu first, then min: converters fuse the relu into the last conv, and int8
        # RELU has no XNNPACK kernel (a single-threaded loop at full HR size otherwise).
        return torch.relu(out).clamp(max=1.0)

    @torch.no_grad()
    def coefficients(self, x):
        """The r of every DRAG for input x: a list of K tensors (B, N(N+1)/2)."""
        out = []
        f = self.head(x)
        for drag in self.body:
            r = drag.coefficients(f)
            out.append(r)
            f = drag(f, r)
        return out


def build_model(variant: str = "32s", scale: int = 4, **kwargs) -> DRSAN:
    """Build a DRSAN by registry name, e.g. build_model("32s", scale=4)."""
    return DRSAN(get_variant(variant), scale, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: DRSAN, hr_height: int = 720, hr_width: int = 1280) -> int:
    """Multiply-accumulates for one HR output of the given size, as the paper counts them.

    Convolutions, plus the element-wise multiplies of PReLU and of the DRA (r * f_j
    and the sigmoid gate): with those the paper's Multi-Adds are matched within
    0.1%; convolutions alone fall 0.7% short. Counted with forward hooks on a pass
    of the LR input on the meta device (shapes only, no arithmetic), so what is
    counted is what runs.
    """
    import copy

    s = model.scale
    model = copy.deepcopy(model).to("meta")
    lr = torch.zeros(1, 3, hr_height // s, hr_width // s, device="meta")
    total = 0

    def conv_hook(mod, inp, out):
        nonlocal total
        total += mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups) * out.numel()

    def prelu_hook(mod, inp, out):
        nonlocal total
        total += out.numel()

    def drag_hook(mod, inp, out):
        nonlocal total
        total += (mod.n_coeffs + mod.n_blocks) * inp[0].numel()

    hooks = {nn.Conv2d: conv_hook, nn.PReLU: prelu_hook, DRAG: drag_hook}
    handles = [m.register_forward_hook(hooks[type(m)]) for m in model.modules() if type(m) in hooks]
    try:
        with torch.no_grad():
            model(lr)
    finally:
        for h in handles:
            h.remove()
    return total

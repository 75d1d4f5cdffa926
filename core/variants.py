"""The DRSAN variant registry: one place that names every model the kit knows.

Plain Python on purpose: the runtime, the converters and the reports read it
without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

SCALES = (2, 3, 4)


@dataclass(frozen=True)
class Variant:
    name: str
    channels: int   # c: feature width
    drags: int      # K: number of DRAGs in the body
    blocks: int     # N: residual blocks per DRAG

    @property
    def n_coeffs(self) -> int:
        """Length of one DRAG's DRA vector r: N(N+1)/2."""
        return self.blocks * (self.blocks + 1) // 2


VARIANTS = {
    v.name: v
    for v in (
        Variant("32s", 32, 4, 4),
        Variant("32m", 32, 8, 4),
        Variant("32l", 32, 10, 4),
        Variant("48s", 48, 4, 3),
        Variant("48m", 48, 8, 3),
    )
}

# Exact parameter counts of the authors' implementation (docs/model.md; the paper rounds them).
PAPER_PARAMS = {
    "32s": {2: 368_427, 3: 414_667, 4: 405_419},
    "32m": {2: 688_851, 3: 735_091, 4: 725_843},
    "32l": {2: 849_063, 3: 895_303, 4: 886_055},
    "48s": {2: 647_195, 3: 751_115, 4: 730_331},
    "48m": {2: 1_187_827, 3: 1_291_747, 4: 1_270_963},
}

# Paper Table II: Multi-Adds (G) for a 1280x720 HR output; None where the paper has no entry.
PAPER_GMACS = {
    "32s": {2: 85.5, 3: 43.2, 4: 30.5},
    "32m": {2: 159.3, 3: 76.0, 4: 49.0},
    "32l": {2: 196.3, 3: None, 4: None},
    "48s": {2: 150.0, 3: 78.0, 4: 57.6},
    "48m": {2: 274.6, 3: 133.4, 4: 88.7},
}

# Paper Table II, PSNR / SSIM on Y (authors' convention).
PAPER_RESULTS = {
    ("32s", 2): {"Set5": (37.99, 0.9606), "Set14": (33.57, 0.9177), "B100": (32.16, 0.8999)},
    ("48s", 2): {"Set5": (38.08, 0.9609), "Set14": (33.62, 0.9175), "B100": (32.19, 0.9002)},
    ("32m", 2): {"Set5": (38.11, 0.9609), "Set14": (33.64, 0.9185), "B100": (32.21, 0.9005)},
    ("32l", 2): {"Set5": (38.13, 0.9610), "Set14": (33.72, 0.9189), "B100": (32.24, 0.9009)},
    ("48m", 2): {"Set5": (38.14, 0.9611), "Set14": (33.75, 0.9188), "B100": (32.25, 0.9010)},
    ("32s", 3): {"Set5": (34.41, 0.9272), "Set14": (30.27, 0.8413), "B100": (29.08, 0.8056)},
    ("32m", 3): {"Set5": (34.50, 0.9278), "Set14": (30.39, 0.8437), "B100": (29.13, 0.8065)},
    ("48s", 3): {"Set5": (34.47, 0.9274), "Set14": (30.35, 0.8422), "B100": (29.11, 0.8060)},
    ("48m", 3): {"Set5": (34.59, 0.9286), "Set14": (30.42, 0.8443), "B100": (29.18, 0.8079)},
    ("32s", 4): {"Set5": (32.15, 0.8935), "Set14": (28.54, 0.7813), "B100": (27.54, 0.7364)},
    ("32m", 4): {"Set5": (32.30, 0.8954), "Set14": (28.66, 0.7838), "B100": (27.61, 0.7381)},
    ("48s", 4): {"Set5": (32.25, 0.8945), "Set14": (28.55, 0.7817), "B100": (27.59, 0.7374)},
    ("48m", 4): {"Set5": (32.34, 0.8960), "Set14": (28.65, 0.7841), "B100": (27.63, 0.7390)},
}

# The usual bicubic floor (published, MATLAB convention), PSNR / SSIM.
BICUBIC_PUBLISHED = {
    2: {"Set5": (33.66, 0.9299), "Set14": (30.24, 0.8688), "B100": (29.56, 0.8431)},
    3: {"Set5": (30.39, 0.8682), "Set14": (27.55, 0.7742), "B100": (27.21, 0.7385)},
    4: {"Set5": (28.42, 0.8104), "Set14": (26.00, 0.7027), "B100": (25.96, 0.6675)},
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


def check_scale(scale: int) -> int:
    if scale not in SCALES:
        raise ValueError(f"unsupported scale x{scale}; DRSAN is defined for x2, x3 and x4")
    return scale
